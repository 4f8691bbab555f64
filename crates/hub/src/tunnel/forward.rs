//! Exposed services on hub ports, the rathole model: `edge-hub serve --forward-listen
//! ADDR=AGENT/NAME` accepts TCP on ADDR and carries each connection through AGENT's tunnel
//! to the local service its person exposed as NAME (`edge-agent expose NAME …`). The agent
//! decides: a name it does not expose is refused, and nothing else on its loopback is
//! reachable this way.
//!
//! Whoever reaches ADDR reaches the service, as with rathole: bind it where only the
//! intended clients can connect (or put the service's own authentication in front).

use super::relay;
use crate::api::AppState;
use edge_tunnel::open::Target;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// One `--forward-listen` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub listen: SocketAddr,
    pub agent_id: String,
    pub service: String,
}

impl std::str::FromStr for Forward {
    type Err = String;

    /// `ADDR=AGENT/NAME`, e.g. `127.0.0.1:9000=agt_01/web`.
    fn from_str(text: &str) -> Result<Forward, String> {
        let usage = || format!("{text:?} is not ADDR=AGENT/NAME (for example 127.0.0.1:9000=agt_01/web)");
        let (listen, exit) = text.split_once('=').ok_or_else(usage)?;
        let (agent_id, service) = exit.split_once('/').ok_or_else(usage)?;
        let listen = listen.parse().map_err(|_| format!("{listen:?} is not ADDRESS:PORT"))?;
        if agent_id.is_empty() || service.is_empty() {
            return Err(usage());
        }
        Ok(Forward { listen, agent_id: agent_id.to_owned(), service: service.to_owned() })
    }
}

/// Serves one forward until `stop`.
pub async fn serve(listener: TcpListener, forward: Forward, app: AppState, stop: CancellationToken) {
    loop {
        let (mut client, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "forward accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (app, forward, stop) = (app.clone(), forward.clone(), stop.clone());
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            // The agent's tunnel may be open on any instance on this database.
            let Some(exit) = super::exit_for(&app, &forward.agent_id).await else {
                crate::metrics::tunnel_refused("NO_AGENT");
                info!(%peer, agent_id = %forward.agent_id, "forward: the agent has no open tunnel; connection closed");
                return;
            };
            match exit.open(&app, Target::Service { name: forward.service.clone() }).await {
                Ok(stream) => {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = relay(&app, &forward.agent_id, &mut client, stream, &[]) => {}
                    }
                }
                Err(e) => info!(%peer, service = %forward.service, error = %e, "forward: refused; connection closed"),
            }
        });
    }
}
