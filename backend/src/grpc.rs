//! The gRPC service `roundhouse.v1.Hosts` (`proto/roundhouse/v1/hosts.proto`):
//! `Get` answers the backend's name, like `GET /host`, so that a client can
//! see which replica served each call of one gRPC channel.
//!
//! It is served by [`crate::app`] on the same port as the HTTP/1.1 routes:
//! gRPC needs HTTP/2, which the server accepts with prior knowledge (h2c).

use tonic::{Request, Response, Status};

use crate::AppState;

/// Code generated from `hosts.proto` (messages, server and client).
#[allow(missing_docs, clippy::pedantic, clippy::all)]
pub mod proto {
    tonic::include_proto!("roundhouse.v1");
}

pub use proto::hosts_client::HostsClient;
pub use proto::hosts_server::HostsServer;
pub use proto::{GetRequest, GetResponse};

/// The full path of the `Get` method, as it appears in the HTTP/2 `:path`.
pub const GET_PATH: &str = "/roundhouse.v1.Hosts/Get";

/// `roundhouse.v1.Hosts`, answering from the handlers' [`AppState`].
#[derive(Debug, Clone)]
pub struct Hosts {
    state: AppState,
}

impl Hosts {
    /// The service reporting `state`'s name.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// The service wrapped in tonic's HTTP service, ready to be routed.
    pub fn into_server(self) -> HostsServer<Self> {
        HostsServer::new(self)
    }
}

#[tonic::async_trait]
impl proto::hosts_server::Hosts for Hosts {
    async fn get(&self, _request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        Ok(Response::new(GetResponse {
            host: self.state.host().to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::hosts_server::Hosts as _;

    #[tokio::test]
    async fn get_answers_the_state_name() {
        let svc = Hosts::new(AppState::new("replica-g"));
        let resp = svc.get(Request::new(GetRequest {})).await.unwrap();
        assert_eq!(resp.into_inner().host, "replica-g");
    }

    #[test]
    fn path_matches_the_generated_service_name() {
        use tonic::server::NamedService;
        assert_eq!(
            format!("/{}/Get", <HostsServer<Hosts> as NamedService>::NAME),
            GET_PATH
        );
    }
}
