//! Connecting to the daemon, for cimplifierctl and tests.

use super::pb;

/// A client of the daemon on `socket`.
pub async fn connect(
    socket: &std::path::Path,
) -> anyhow::Result<pb::cimplifier_client::CimplifierClient<tonic::transport::Channel>> {
    Ok(pb::cimplifier_client::CimplifierClient::new(
        channel(socket).await?,
    ))
}

/// A gRPC channel to the daemon on `socket` (for the API or health).
pub async fn channel(socket: &std::path::Path) -> anyhow::Result<tonic::transport::Channel> {
    use anyhow::Context;
    let path = socket.to_owned();
    let channel = tonic::transport::Endpoint::try_from("http://cimplifierd.invalid")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .with_context(|| {
            format!(
                "connecting to cimplifierd on {} (is it running? `cimplifierd serve` starts it; --socket picks another)",
                socket.display()
            )
        })?;
    Ok(channel)
}
