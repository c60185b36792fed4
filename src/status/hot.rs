//! The hottest images in bounded memory: the space-saving algorithm
//! (Metwally et al.) keeps at most `capacity` counters. An image not yet
//! counted, arriving when every counter is taken, replaces the least
//! counted one and inherits its count, so a count can only be too high,
//! by at most the count it inherited, and an image requested more often
//! than `total / capacity` times is always present.

use std::collections::HashMap;

/// Request counts per image reference, at most `capacity` of them.
#[derive(Debug)]
pub struct HotImages {
    capacity: usize,
    counts: HashMap<String, u64>,
}

impl HotImages {
    /// Room for `capacity` images (at least one).
    pub fn new(capacity: usize) -> Self {
        HotImages {
            capacity: capacity.max(1),
            counts: HashMap::new(),
        }
    }

    /// Counts one request for `image`.
    pub fn count(&mut self, image: &str) {
        if let Some(n) = self.counts.get_mut(image) {
            *n += 1;
            return;
        }
        let mut inherited = 0;
        if self.counts.len() >= self.capacity {
            let least = self
                .counts
                .iter()
                .min_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                .map(|(k, n)| (k.clone(), *n));
            if let Some((key, n)) = least {
                self.counts.remove(&key);
                inherited = n;
            }
        }
        self.counts.insert(image.to_owned(), inherited + 1);
    }

    /// The `n` most requested, most first (ties by name).
    pub fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> =
            self.counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Every image counted, with its count: what is saved across restarts.
    pub fn counts(&self) -> &HashMap<String, u64> {
        &self.counts
    }

    /// Room for `capacity` images, counted as `counts` says (the most
    /// counted kept when there are more).
    pub fn with_counts(capacity: usize, counts: HashMap<String, u64>) -> Self {
        let mut hot = HotImages::new(capacity);
        let mut all: Vec<(String, u64)> = counts.into_iter().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        hot.counts = all.into_iter().take(hot.capacity).collect();
        hot
    }

    /// How many images are counted now.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether nothing was counted yet.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// An image as the hottest list shows it: `registry/repository:tag` or
/// `registry/repository@digest`.
pub fn image_name(registry: &str, repository: &str, reference: &str) -> String {
    let separator = if reference.contains(':') { '@' } else { ':' };
    // Built piece by piece: this runs for every manifest request.
    let mut name = String::with_capacity(registry.len() + repository.len() + reference.len() + 2);
    name.push_str(registry);
    name.push('/');
    name.push_str(repository);
    name.push(separator);
    name.push_str(reference);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_named_by_registry_repository_and_reference() {
        assert_eq!(
            image_name("ghcr.io", "org/app", "sha256:ab"),
            "ghcr.io/org/app@sha256:ab"
        );
        assert_eq!(
            image_name("docker.io", "library/nginx", "1"),
            "docker.io/library/nginx:1"
        );
    }

    #[test]
    fn exact_while_there_is_room() {
        let mut hot = HotImages::new(8);
        for (image, times) in [("a:1", 3), ("b:1", 5), ("c:1", 1)] {
            for _ in 0..times {
                hot.count(image);
            }
        }
        assert_eq!(
            hot.top(2),
            vec![("b:1".to_owned(), 5), ("a:1".to_owned(), 3)]
        );
    }

    #[test]
    fn bounded_and_keeps_the_heavy_hitters() {
        // 500 requests over 8 counters: anything above 62 is kept.
        let mut hot = HotImages::new(8);
        for round in 0..200 {
            hot.count("heavy:1");
            hot.count(&format!("once:{round}"));
            if round % 2 == 0 {
                hot.count("medium:1");
            }
        }
        assert_eq!(hot.len(), 8);
        let top = hot.top(2);
        assert_eq!(top[0].0, "heavy:1");
        // Counts never fall below the truth.
        assert!(top[0].1 >= 200);
        assert!(hot.top(8).iter().any(|(k, n)| k == "medium:1" && *n >= 100));
    }
}
