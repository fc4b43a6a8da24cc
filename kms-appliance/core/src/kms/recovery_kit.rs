//! The recovery kit of this KMS's root key: made once, kept in the sealed store.

use super::{from_json, to_json, Kms, KmsError};
use crate::recovery::{self, RecoveryKit, RecoveryPolicy};
use crate::store::{Batch, Table};

/// The kit's record in [`Table::Meta`]. The kit holds no secret; it is sealed like every record
/// so the host cannot swap it for a kit of its own making.
const RECOVERY_KIT: &str = "recovery-kit";

impl Kms {
    /// The recovery kit of the root key under `policy`: the one made before, or, the first time,
    /// a new split (committed before it is returned, so the shares handed out are the ones kept).
    /// A kit made under another policy stays: officers change only with a new root key.
    pub fn recovery_kit(
        &mut self,
        policy: &coffer_types::RecoveryPolicy,
        deployment_id: &str,
    ) -> Result<RecoveryKit, KmsError> {
        // A replica hands out the kit another replica made; only one of them makes it.
        self.serialized(|kms| kms.recovery_kit_once(policy, deployment_id))
    }

    fn recovery_kit_once(
        &mut self,
        policy: &coffer_types::RecoveryPolicy,
        deployment_id: &str,
    ) -> Result<RecoveryKit, KmsError> {
        let record = format!("meta/{RECOVERY_KIT}");
        if let Some(bytes) = self.store.get(Table::Meta, RECOVERY_KIT)? {
            let kit: RecoveryKit = from_json(&record, &bytes)?;
            if kit.info.deployment_id != deployment_id {
                return Err(KmsError::Record {
                    record,
                    reason: format!(
                        "a kit for deployment {}, this is {deployment_id}",
                        kit.info.deployment_id
                    ),
                });
            }
            return Ok(kit);
        }
        let kit = recovery::split(
            &self.root,
            &RecoveryPolicy::try_from(policy)?,
            deployment_id,
        )?;
        let mut batch = Batch::new();
        batch.put(Table::Meta, RECOVERY_KIT, &to_json(&record, &kit)?);
        self.store.commit(batch)?;
        Ok(kit)
    }
}
