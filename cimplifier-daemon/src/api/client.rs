//! Connecting to the daemon, for cimplifierctl and tests.

use super::pb;
use super::transport::{Address, connect_channel};

/// A client of the daemon at `address`: a unix socket (a path), or an
/// [`Address`] naming a TCP listener and its TLS.
/// The largest answer the client takes from the daemon.
pub const MAX_ANSWER: usize = 256 << 20;

pub async fn connect(
    address: impl Into<Address>,
) -> anyhow::Result<pb::cimplifier_client::CimplifierClient<tonic::transport::Channel>> {
    // Reports and models of large sessions exceed gRPC's default 4 MiB.
    Ok(
        pb::cimplifier_client::CimplifierClient::new(channel(address).await?)
            .max_decoding_message_size(MAX_ANSWER),
    )
}

/// A gRPC channel to the daemon at `address` (for the API or health).
pub async fn channel(address: impl Into<Address>) -> anyhow::Result<tonic::transport::Channel> {
    connect_channel(&address.into()).await
}
