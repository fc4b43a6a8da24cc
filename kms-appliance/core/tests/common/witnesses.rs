//! Witnesses on a simulated network: in-process [`WitnessTable`]s behind URLs, which a test
//! restarts (a new incarnation that remembers nothing) and cuts off.

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use coffer_kms::rollback::quorum::{
    Incarnation, Outcome, WitnessReply, WitnessRequest, WitnessTable, WitnessTransport,
};

/// A witness process on the simulated network.
pub struct Process {
    incarnation: Incarnation,
    table: Arc<WitnessTable>,
    reachable: bool,
}

/// The simulated network: URL → the process answering there.
#[derive(Clone, Default)]
pub struct Net(Arc<Mutex<HashMap<String, Process>>>);

impl Net {
    /// Starts (or restarts: a new incarnation with an empty memory) the witness at `url`.
    pub fn start(&self, url: &str) {
        let mut incarnation = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut incarnation);
        self.0.lock().unwrap().insert(
            url.to_owned(),
            Process {
                incarnation,
                table: Arc::new(WitnessTable::new()),
                reachable: true,
            },
        );
    }

    pub fn cut(&self, url: &str, cut: bool) {
        self.0.lock().unwrap().get_mut(url).unwrap().reachable = !cut;
    }

    pub fn table(&self, url: &str) -> Arc<WitnessTable> {
        self.0.lock().unwrap()[url].table.clone()
    }
}

impl WitnessTransport for Net {
    fn call_all(
        &self,
        urls: &[String],
        request: &WitnessRequest,
    ) -> Vec<Result<(Incarnation, Outcome), String>> {
        let net = self.0.lock().unwrap();
        urls.iter()
            .map(|url| {
                let process = net
                    .get(url)
                    .filter(|p| p.reachable)
                    .ok_or_else(|| "connection refused".to_owned())?;
                // Through the witness's own request handler, as the endpoint serves it.
                let body = serde_json::to_vec(request).unwrap();
                let (status, reply) = process.table.answer(&body);
                let reply: WitnessReply =
                    serde_json::from_value(reply).map_err(|e| e.to_string())?;
                let outcome = reply.outcome(status)?;
                Ok((process.incarnation, outcome))
            })
            .collect()
    }
}
