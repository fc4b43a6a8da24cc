//! A mesh session's life: bounded age, and the end of it when the peer's pin is revoked.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::{MeshError, PeerIdentity, Trust};

/// An established session with an attested peer.
#[derive(Debug, Clone)]
pub struct Session {
    peer: Arc<PeerIdentity>,
    trust: Arc<Trust>,
    established: Instant,
    max_age: Duration,
}

impl Session {
    pub(crate) fn new(peer: PeerIdentity, trust: Arc<Trust>) -> Self {
        let max_age = trust.max_session_age();
        Self {
            peer: Arc::new(peer),
            trust,
            established: Instant::now(),
            max_age,
        }
    }

    /// Who the peer is.
    pub fn peer(&self) -> &Arc<PeerIdentity> {
        &self.peer
    }

    /// Ok while the session may be used: the peer's pin is still in force and the session is
    /// younger than the deployment's limit.
    pub fn check(&self) -> Result<(), MeshError> {
        if !self.trust.is_pinned(self.peer.role, &self.peer.measurement) {
            return Err(self.revoked());
        }
        if self.established.elapsed() >= self.max_age {
            return Err(MeshError::Expired(self.max_age.as_secs()));
        }
        Ok(())
    }

    fn revoked(&self) -> MeshError {
        MeshError::PinRevoked {
            role: self.peer.role,
            measurement: hex::encode(self.peer.measurement),
        }
    }

    /// Resolves when the session must end, with the reason. Drop the connection then.
    pub async fn ended(&self) -> MeshError {
        let mut pins = self.trust.watch_pins();
        let deadline = self.established + self.max_age;
        loop {
            if let Err(e) = self.check() {
                return e;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    return MeshError::Expired(self.max_age.as_secs());
                }
                changed = pins.changed() => {
                    if changed.is_err() {
                        // The trust is gone: nothing can vouch for the peer any more.
                        return self.revoked();
                    }
                }
            }
        }
    }
}
