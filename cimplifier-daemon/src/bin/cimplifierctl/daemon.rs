//! Reaching the daemon, and the exit code each failure gives.

use cimplifier::api::Address;
use cimplifier::api::pb::cimplifier_client::CimplifierClient;

/// A client of the daemon's API.
pub type Client = CimplifierClient<tonic::transport::Channel>;

/// A gRPC status from the daemon.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct DaemonStatus {
    code: tonic::Code,
    message: String,
}

/// The daemon could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Unreachable(pub anyhow::Error);

/// A bad argument, found before anything was asked of the daemon: exit 2,
/// as clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// A usage error (exit 2) saying `message`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Usage(message.into()).into()
}

/// No such session or container, found by cimplifierctl itself: exit 4.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoSuch(pub String);

/// A gRPC status from the daemon, as an error (its code picks the exit code).
pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(DaemonStatus {
        code: s.code(),
        message: s.message().to_owned(),
    })
}

/// The workload of `observe --exec` failed or was stopped: cimplifierctl
/// exits with its status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct WorkloadFailed {
    pub code: u8,
    pub message: String,
}

/// The exit code for an error (see `cimplifierctl --help`).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Unreachable>().is_some() {
        return 3;
    }
    if e.downcast_ref::<Usage>().is_some() {
        return 2;
    }
    if e.downcast_ref::<NoSuch>().is_some() {
        return 4;
    }
    if let Some(w) = e.downcast_ref::<WorkloadFailed>() {
        return w.code;
    }
    match e.downcast_ref::<DaemonStatus>().map(|s| s.code) {
        Some(tonic::Code::NotFound) => 4,
        Some(tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists) => 5,
        Some(tonic::Code::InvalidArgument) => 2,
        Some(tonic::Code::ResourceExhausted) => 6,
        // The caller's role does not cover the call (docs/security.md).
        Some(tonic::Code::PermissionDenied) => 8,
        _ => 1,
    }
}

/// The runtime each command's calls run on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Connects to the daemon; failing to is [`Unreachable`] (exit 3).
pub async fn connect(address: &Address) -> anyhow::Result<Client> {
    Ok(cimplifier::api::connect(address)
        .await
        .map_err(Unreachable)?)
}

/// One call to the daemon; a gRPC status becomes an error naming it.
pub fn daemon<T>(
    address: &Address,
    call: impl AsyncFnOnce(Client) -> Result<tonic::Response<T>, tonic::Status>,
) -> anyhow::Result<T> {
    runtime()?.block_on(async {
        call(connect(address).await?)
            .await
            .map(tonic::Response::into_inner)
            .map_err(status)
    })
}
