//! A CloudFormation template as the tests read it: YAML with the short
//! intrinsic forms (`!Ref`, `!Sub`, `!If`, …) loaded as their long JSON
//! forms, and evaluated for one set of parameters (the defaults unless
//! overridden) the way CloudFormation would for what the tests check:
//! `Ref`, `Fn::Sub`, `Fn::GetAtt`, `Fn::If`, `Fn::Join` and the
//! conditions. A resource's `Ref` is its logical id, except a bucket's,
//! which is its name; a `Fn::GetAtt` of a property the resource sets (a
//! Cloud Map service's `Name`) is that property.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use yaml_rust2::parser::{Event, EventReceiver, Parser, Tag};

/// The pseudo-parameters' values in the tests.
pub const REGION: &str = "eu-west-1";
pub const STACK_NAME: &str = "pullthrough";

/// What `AWS::NoValue` evaluates to until its key or item is dropped.
const NO_VALUE: &str = "\u{0}AWS::NoValue";

/// Loads YAML text, with CloudFormation's short tags as long forms.
pub fn load_yaml(text: &str) -> Value {
    let mut builder = Builder::default();
    Parser::new_from_str(text)
        .load(&mut builder, false)
        .expect("valid YAML");
    builder.docs.pop().expect("one document")
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Value, Option<String>, Option<Tag>)>,
    docs: Vec<Value>,
}

fn tagged(tag: Option<Tag>, value: Value) -> Value {
    match tag {
        Some(Tag { handle, suffix }) if handle == "!" => {
            let key = match suffix.as_str() {
                "Ref" | "Condition" => suffix.clone(),
                _ => format!("Fn::{suffix}"),
            };
            let value = match (suffix.as_str(), value) {
                ("GetAtt", Value::String(s)) => {
                    let (resource, attribute) = s.split_once('.').expect("!GetAtt X.Attr");
                    json!([resource, attribute])
                }
                (_, value) => value,
            };
            json!({ key: value })
        }
        _ => value,
    }
}

impl Builder {
    fn push(&mut self, value: Value) {
        match self.stack.last_mut() {
            None => self.docs.push(value),
            Some((Value::Array(items), _, _)) => items.push(value),
            Some((Value::Object(map), key, _)) => match key.take() {
                None => *key = Some(value.as_str().map_or(value.to_string(), str::to_owned)),
                Some(k) => {
                    map.insert(k, value);
                }
            },
            Some(_) => unreachable!("only collections are open"),
        }
    }
}

impl EventReceiver for Builder {
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Scalar(text, style, _, tag) => {
                let plain = style == yaml_rust2::scanner::TScalarStyle::Plain;
                let value = match yaml_rust2::Yaml::from_str(&text) {
                    yaml_rust2::Yaml::Integer(i) if plain && tag.is_none() => json!(i),
                    yaml_rust2::Yaml::Boolean(b) if plain && tag.is_none() => json!(b),
                    _ => Value::String(text),
                };
                self.push(tagged(tag, value));
            }
            Event::SequenceStart(_, tag) => self.stack.push((json!([]), None, tag)),
            Event::MappingStart(_, tag) => self.stack.push((json!({}), None, tag)),
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, _, tag) = self.stack.pop().expect("open collection");
                self.push(tagged(tag, value));
            }
            Event::Alias(_) => panic!("templates use no YAML aliases"),
            _ => {}
        }
    }
}

/// A template evaluated for one set of parameters.
pub struct Stack {
    pub template: Value,
    parameters: BTreeMap<String, Value>,
}

impl Stack {
    /// The template at `path` (relative to the crate root), with each
    /// parameter's default overlaid by `overrides`. A parameter with
    /// neither is an error, as in `aws cloudformation deploy`.
    pub fn load(path: &str, overrides: &[(&str, &str)]) -> Stack {
        let text =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
                .unwrap();
        let template = load_yaml(&text);
        let mut parameters = BTreeMap::new();
        for (name, declared) in template["Parameters"].as_object().unwrap() {
            let given = overrides
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| json!(v))
                .or_else(|| declared.get("Default").cloned())
                .unwrap_or_else(|| panic!("parameter {name} has no default and was not given"));
            let text = scalar(&given);
            let kind = declared["Type"].as_str().unwrap();
            let value = if kind == "CommaDelimitedList" || kind.starts_with("List<") {
                json!(text.split(',').collect::<Vec<_>>())
            } else {
                json!(text)
            };
            parameters.insert(name.clone(), value);
        }
        for (name, _) in overrides {
            assert!(parameters.contains_key(*name), "no parameter {name}");
        }
        Stack {
            template,
            parameters,
        }
    }

    /// Whether the named condition holds.
    pub fn condition(&self, name: &str) -> bool {
        let declared = &self.template["Conditions"][name];
        assert!(!declared.is_null(), "no condition {name}");
        self.holds(declared)
    }

    fn holds(&self, condition: &Value) -> bool {
        let (function, args) = single(condition).expect("a condition function");
        match function {
            "Fn::Equals" => scalar(&self.eval(&args[0])) == scalar(&self.eval(&args[1])),
            "Fn::Not" => !self.holds(&args[0]),
            "Fn::And" => args.as_array().unwrap().iter().all(|c| self.holds(c)),
            "Fn::Or" => args.as_array().unwrap().iter().any(|c| self.holds(c)),
            "Condition" => self.condition(args.as_str().unwrap()),
            other => panic!("condition function {other}"),
        }
    }

    /// The resource's evaluated definition, or `None` when its condition
    /// does not hold.
    pub fn resource(&self, id: &str) -> Option<Value> {
        let declared = &self.template["Resources"][id];
        assert!(!declared.is_null(), "no resource {id}");
        if let Some(condition) = declared["Condition"].as_str()
            && !self.condition(condition)
        {
            return None;
        }
        Some(self.eval(declared))
    }

    /// The evaluated resources of `kind`, by logical id.
    pub fn resources_of(&self, kind: &str) -> BTreeMap<String, Value> {
        self.template["Resources"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, r)| r["Type"] == kind)
            .filter_map(|(id, _)| Some((id.clone(), self.resource(id)?)))
            .collect()
    }

    /// The output's evaluated value.
    pub fn output(&self, id: &str) -> Value {
        let declared = &self.template["Outputs"][id]["Value"];
        assert!(!declared.is_null(), "no output {id}");
        self.eval(declared)
    }

    /// `value` with every intrinsic function this module knows evaluated.
    pub fn eval(&self, value: &Value) -> Value {
        if let Some((function, args)) = single(value) {
            match function {
                "Ref" => return self.reference(args.as_str().unwrap()),
                "Fn::Sub" => return json!(self.substitute(args.as_str().expect("!Sub \"text\""))),
                "Fn::GetAtt" => {
                    return self.attribute(args[0].as_str().unwrap(), args[1].as_str().unwrap());
                }
                "Fn::If" => {
                    let branch = if self.condition(args[0].as_str().unwrap()) {
                        1
                    } else {
                        2
                    };
                    return self.eval(&args[branch]);
                }
                "Fn::Join" => {
                    let items = self.eval(&args[1]);
                    let items: Vec<String> = items.as_array().unwrap().iter().map(scalar).collect();
                    return json!(items.join(args[0].as_str().unwrap()));
                }
                _ => {}
            }
        }
        match value {
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.eval(v))
                    .filter(|v| !is_no_value(v))
                    .collect(),
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.eval(v)))
                    .filter(|(_, v)| !is_no_value(v))
                    .collect::<Map<_, _>>(),
            ),
            other => other.clone(),
        }
    }

    fn reference(&self, name: &str) -> Value {
        match name {
            "AWS::NoValue" => return json!(NO_VALUE),
            "AWS::Region" => return json!(REGION),
            "AWS::StackName" => return json!(STACK_NAME),
            "AWS::Partition" => return json!("aws"),
            "AWS::AccountId" => return json!("123456789012"),
            _ => {}
        }
        if let Some(value) = self.parameters.get(name) {
            return value.clone();
        }
        let resource = &self.template["Resources"][name];
        assert!(!resource.is_null(), "Ref to nothing: {name}");
        if resource["Type"] == "AWS::S3::Bucket" {
            let named = self.eval(&resource["Properties"]["BucketName"]);
            return json!(
                named
                    .as_str()
                    .filter(|_| !is_no_value(&named))
                    .unwrap_or("bucket-by-cloudformation")
            );
        }
        json!(name)
    }

    fn attribute(&self, id: &str, attribute: &str) -> Value {
        let resource = &self.template["Resources"][id];
        assert!(!resource.is_null(), "GetAtt of nothing: {id}");
        if resource["Type"] == "AWS::S3::Bucket" && attribute == "Arn" {
            return json!(format!("arn:aws:s3:::{}", scalar(&self.reference(id))));
        }
        match resource["Properties"].get(attribute) {
            Some(set) => self.eval(set),
            None => json!(format!("{id}.{attribute}")),
        }
    }

    fn substitute(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').expect("closed ${") + start;
            let name = &rest[start + 2..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str(&format!("${{{literal}}}"));
            } else {
                let value = match name.split_once('.') {
                    Some((id, attribute)) if !name.starts_with("AWS::") => {
                        self.attribute(id, attribute)
                    }
                    _ => self.reference(name),
                };
                out.push_str(&scalar(&value));
            }
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    }
}

fn is_no_value(value: &Value) -> bool {
    value.as_str() == Some(NO_VALUE)
}

/// `{"Fn::X": args}`: the function's name and its arguments.
fn single(value: &Value) -> Option<(&str, &Value)> {
    let map = value.as_object()?;
    let (key, args) = map.iter().next()?;
    (map.len() == 1 && (key.starts_with("Fn::") || key == "Ref" || key == "Condition"))
        .then_some((key.as_str(), args))
}

/// A scalar as CloudFormation passes it on: a string.
pub fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other}"),
    }
}
