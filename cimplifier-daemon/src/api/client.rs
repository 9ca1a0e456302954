//! Connecting to the daemon, for cimplifierctl and tests.

use super::pb;
use super::transport::{Address, connect_channel};

/// A client of the daemon at `address`: a unix socket (a path), or an
/// [`Address`] naming a TCP listener and its TLS.
pub async fn connect(
    address: impl Into<Address>,
) -> anyhow::Result<pb::cimplifier_client::CimplifierClient<tonic::transport::Channel>> {
    Ok(pb::cimplifier_client::CimplifierClient::new(
        channel(address).await?,
    ))
}

/// A gRPC channel to the daemon at `address` (for the API or health).
pub async fn channel(address: impl Into<Address>) -> anyhow::Result<tonic::transport::Channel> {
    connect_channel(&address.into()).await
}
