//! Who a request comes from, for the fair share of counted pulls: the
//! connection's peer address (what `axum::serve` records when the router is
//! served with connect info), or an authenticated client's name when a
//! layer in front has put one in the request's extensions. A client's own
//! request is a [`Caller`] of the fleet scope; only the peer path makes
//! others.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use http::request::Parts;

use crate::registry::{Caller, ClientId};

impl<S: Send + Sync> FromRequestParts<S> for ClientId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(named) = parts.extensions.get::<ClientId>() {
            return Ok(named.clone());
        }
        Ok(parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(ClientId::Unknown, |info| ClientId::Address(info.0.ip())))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let client = ClientId::from_request_parts(parts, state).await?;
        Ok(Caller::client(client))
    }
}
