//! The host side, for CI: make an swtpm look like an Azure CVM vTPM whose HCL report carries a
//! simulated SEV-SNP report.
//!
//! [`provision_swtpm`] does what Azure's platform and paravisor do before the guest runs:
//!
//! 1. Creates a storage primary key (RSA-2048, restricted decryption, AES-128-CFB) in the owner
//!    hierarchy, and under it the AK: RSA-2048, exponent 65537, `fixedTPM | fixedParent |
//!    sensitiveDataOrigin | userWithAuth | restricted | sign`, scheme RSASSA-PKCS1-v1_5/SHA-256,
//!    name algorithm SHA-256 (the attributes of Azure's AK). The AK is persisted at 0x81000003
//!    (replacing whatever was there); both transient objects are flushed on every path.
//! 2. Builds the runtime claims: one JWK, `kid` `HCLAkPub`, with the AK's modulus and exponent,
//!    and a `vm-configuration`.
//! 3. Asks the [`SimRoot`] for a real-format SNP report (version 3, Genoa, VMPL 0) with the given
//!    measurement and host data and `report_data = SHA-256(claims) || 32 zero bytes`, the binding
//!    the HCL makes; it is signed by the simulated VCEK.
//! 4. Lays out the HCL report exactly as [`coffer_vtpm::hcl`] parses it (header "HCLA" version
//!    2, the SNP report, the IGVM request data, the claims), zero-padded to the NV index size, and
//!    writes it to NV 0x01400001 (owner and auth read/write, redefined if present).
//!
//! **Size.** Azure's index is 2600 bytes, but libtpms caps an NV index at
//! TPM2_PT_NV_INDEX_MAX = 2048 bytes ([`SWTPM_NV_INDEX_MAX`]; `tpm2_nvdefine -s 2600` fails with
//! TPM_RC_SIZE). 32 + 1184 + 20 bytes of fixed layout leave 812 bytes for the claims, so the
//! claims are shrunk to what the verifier uses: no `HCLEkPub` JWK (another ~400 bytes; nothing
//! checks the EK), no `user-data` (there is no paravisor to refresh the report: writing NV
//! 0x01400002 on an swtpm changes nothing, so claiming user data would be a lie), no
//! `root-cert-thumbprint`, compact JSON: 550 bytes with the default VM id. The index is defined
//! with the TPM's own maximum (at most Azure's 2600) and the report zero-padded to it, as on
//! Azure; a report that would not fit fails with [`ProvisionError::TooLarge`] rather than being
//! cut.

use base64ct::{Base64UrlUnpadded, Encoding};
use coffer_sim::{ReportFields, SimRoot};
use coffer_vtpm::hcl::{
    AK_KID, CLAIMS_OFFSET, HARDWARE_REPORT_OFFSET, HARDWARE_REPORT_SIZE, HCL_SIGNATURE,
    IGVM_REQUEST_DATA_SIZE,
};
use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::{NvIndexAttributesBuilder, ObjectAttributesBuilder};
use tss_esapi::constants::PropertyTag;
use tss_esapi::handles::{
    KeyHandle, NvIndexHandle, NvIndexTpmHandle, ObjectHandle, PersistentTpmHandle, TpmHandle,
};
use tss_esapi::interface_types::algorithm::{
    HashingAlgorithm, PublicAlgorithm, RsaSchemeAlgorithm,
};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::structures::{
    NvPublicBuilder, Public, PublicBuilder, PublicKeyRsa, PublicRsaParametersBuilder, RsaExponent,
    RsaScheme, SymmetricDefinitionObject,
};
use tss_esapi::utils::create_restricted_decryption_rsa_public;
use tss_esapi::Context;

use crate::error::ProvisionError;
use crate::tpm::{
    close, connect, esys_handle, exists, nv_write_all, AK_PERSISTENT_HANDLE, HCL_REPORT_NV_INDEX,
};

/// libtpms' TPM2_PT_NV_INDEX_MAX: the largest NV index an swtpm can define.
pub const SWTPM_NV_INDEX_MAX: usize = 2048;
/// Azure's size of NV 0x01400001; a TPM that allows more still gets this much.
const AZURE_HCL_NV_SIZE: usize = 2600;
/// HCL header version written (the newer reports' version).
const HCL_VERSION: u32 = 2;
/// HCL header request type (2 in every report seen).
const HCL_REQUEST_TYPE: u32 = 2;
/// IGVM request data: version 1, report type 2 (SNP), hash type 1 (SHA-256).
const IGVM_VERSION: u32 = 1;
const IGVM_REPORT_TYPE_SNP: u32 = 2;
const IGVM_HASH_TYPE_SHA256: u32 = 1;
/// RSA-2048 modulus bytes.
const AK_MODULUS_BYTES: usize = 256;

/// What the simulated platform puts into the SNP report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPlatform {
    /// MEASUREMENT: the launch digest (on Azure, Microsoft's paravisor and firmware).
    pub measurement: [u8; 48],
    /// HOST_DATA.
    pub host_data: [u8; 32],
    /// `vm-configuration.vmUniqueId` in the claims.
    pub vm_unique_id: String,
}

impl SimPlatform {
    /// A platform with this measurement and host data, VM id `coffer-sim`.
    pub fn new(measurement: [u8; 48], host_data: [u8; 32]) -> Self {
        Self {
            measurement,
            host_data,
            vm_unique_id: "coffer-sim".into(),
        }
    }
}

/// What was provisioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The bytes written to NV 0x01400001 (the HCL report, zero-padded to `nv_size`).
    pub hcl_report: Vec<u8>,
    /// The size NV 0x01400001 was defined with.
    pub nv_size: usize,
    /// The SNP report inside the HCL report, signed by the simulated VCEK.
    pub snp_report: Vec<u8>,
    /// The runtime claims JSON exactly as stored (its SHA-256 is `report_data[0..32]`).
    pub claims_json: Vec<u8>,
    /// The AK's RSA modulus, big-endian.
    pub ak_modulus: Vec<u8>,
}

fn op(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> ProvisionError {
    move |source| ProvisionError::Tpm { op, source }
}

/// Provisions the TPM behind `tcti` (an swtpm, e.g. `swtpm:host=127.0.0.1,port=N`; never a real
/// TPM: it replaces 0x81000003 and 0x01400001) as a simulated Azure vTPM whose SNP report
/// `root` signs. See the module documentation for each step.
pub fn provision_swtpm(
    tcti: &str,
    root: &SimRoot,
    platform: &SimPlatform,
) -> Result<Provisioned, ProvisionError> {
    let mut ctx = connect(tcti).map_err(ProvisionError::Open)?;

    let (modulus, exponent) = create_ak(&mut ctx)?;
    let claims_json = claims(&modulus, exponent, &platform.vm_unique_id);

    let mut report_data = [0u8; 64];
    report_data[..32].copy_from_slice(&Sha256::digest(&claims_json));
    let snp_report = root.sign_report(&ReportFields {
        measurement: platform.measurement,
        host_data: platform.host_data,
        report_data,
        ..ReportFields::default()
    });

    let needed = CLAIMS_OFFSET + claims_json.len();
    let max = ctx
        .get_tpm_property(PropertyTag::NvIndexMax)
        .map_err(op("TPM2_GetCapability(TPM2_PT_NV_INDEX_MAX)"))?
        .and_then(|m| usize::try_from(m).ok())
        .unwrap_or(SWTPM_NV_INDEX_MAX);
    let nv_size = max.min(AZURE_HCL_NV_SIZE);
    if needed > nv_size {
        return Err(ProvisionError::TooLarge {
            needed,
            max: nv_size,
            claims: claims_json.len(),
        });
    }
    let hcl_report = hcl_report(&snp_report, &claims_json, nv_size);
    write_hcl_report(&mut ctx, &hcl_report)?;

    Ok(Provisioned {
        hcl_report,
        nv_size,
        snp_report: snp_report.to_vec(),
        claims_json,
        ak_modulus: modulus,
    })
}

/// The HCL report layout of [`coffer_vtpm::hcl`], zero-padded to `nv_size`.
fn hcl_report(snp_report: &[u8], claims: &[u8], nv_size: usize) -> Vec<u8> {
    let used = CLAIMS_OFFSET + claims.len();
    let claims_size = claims.len() as u32;
    let mut out = Vec::with_capacity(nv_size.max(used));
    out.extend_from_slice(&HCL_SIGNATURE);
    out.extend_from_slice(&HCL_VERSION.to_le_bytes());
    out.extend_from_slice(&(used as u32).to_le_bytes()); // "report size": the used length
    out.extend_from_slice(&HCL_REQUEST_TYPE.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // status
    out.resize(HARDWARE_REPORT_OFFSET, 0); // reserved
    out.extend_from_slice(snp_report);
    out.resize(HARDWARE_REPORT_OFFSET + HARDWARE_REPORT_SIZE, 0);
    out.extend_from_slice(&(IGVM_REQUEST_DATA_SIZE as u32 + claims_size).to_le_bytes());
    out.extend_from_slice(&IGVM_VERSION.to_le_bytes());
    out.extend_from_slice(&IGVM_REPORT_TYPE_SNP.to_le_bytes());
    out.extend_from_slice(&IGVM_HASH_TYPE_SHA256.to_le_bytes());
    out.extend_from_slice(&claims_size.to_le_bytes());
    out.extend_from_slice(claims);
    out.resize(nv_size.max(used), 0);
    out
}

/// The runtime claims: the AK as JWK `HCLAkPub`, and a `vm-configuration`. Compact JSON (keys
/// sorted by serde_json's map); see the module documentation for what is left out and why.
fn claims(modulus: &[u8], exponent: u32, vm_unique_id: &str) -> Vec<u8> {
    let e = exponent.to_be_bytes();
    let e = &e[e.iter().position(|b| *b != 0).unwrap_or(3)..];
    serde_json::json!({
        "keys": [{
            "kid": AK_KID,
            "key_ops": ["sign"],
            "kty": "RSA",
            "e": Base64UrlUnpadded::encode_string(e),
            "n": Base64UrlUnpadded::encode_string(modulus),
        }],
        "vm-configuration": {
            "console-enabled": true,
            "secure-boot": false,
            "tpm-enabled": true,
            "tpm-persisted": true,
            "vmUniqueId": vm_unique_id,
        },
    })
    .to_string()
    .into_bytes()
}

/// Creates the AK under a fresh storage primary and persists it at 0x81000003. Returns its
/// modulus and exponent. Both transient objects are flushed whatever happens.
fn create_ak(ctx: &mut Context) -> Result<(Vec<u8>, u32), ProvisionError> {
    let srk = create_restricted_decryption_rsa_public(
        SymmetricDefinitionObject::AES_128_CFB,
        RsaKeyBits::Rsa2048,
        RsaExponent::ZERO_EXPONENT,
    )
    .map_err(op("storage primary template"))?;
    let primary = ctx
        .create_primary(Hierarchy::Owner, srk, None, None, None, None)
        .map_err(op("TPM2_CreatePrimary (owner storage key)"))?
        .key_handle;
    let result = create_ak_under(ctx, primary);
    let flushed = ctx
        .flush_context(primary.into())
        .map_err(op("TPM2_FlushContext of the storage primary"));
    let created = result?;
    flushed?;
    Ok(created)
}

fn ak_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .build()?;
    let parameters = PublicRsaParametersBuilder::new()
        .with_scheme(RsaScheme::create(
            RsaSchemeAlgorithm::RsaSsa,
            Some(HashingAlgorithm::Sha256),
        )?)
        .with_key_bits(RsaKeyBits::Rsa2048)
        .with_exponent(RsaExponent::ZERO_EXPONENT)
        .with_is_signing_key(true)
        .with_restricted(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_rsa_parameters(parameters)
        .with_rsa_unique_identifier(PublicKeyRsa::default())
        .build()
}

fn create_ak_under(
    ctx: &mut Context,
    primary: KeyHandle,
) -> Result<(Vec<u8>, u32), ProvisionError> {
    let template = ak_template().map_err(op("AK template"))?;
    let created = ctx
        .create(primary, template, None, None, None, None)
        .map_err(op("TPM2_Create of the AK"))?;
    let Public::Rsa {
        unique, parameters, ..
    } = &created.out_public
    else {
        return Err(ProvisionError::AkShape {
            found: "not an RSA key".into(),
        });
    };
    let modulus = unique.value().to_vec();
    if modulus.len() != AK_MODULUS_BYTES {
        return Err(ProvisionError::AkShape {
            found: format!("{}-byte modulus", modulus.len()),
        });
    }
    let exponent = match parameters.exponent().value() {
        0 => 65537,
        e => e,
    };
    let ak = ctx
        .load(primary, created.out_private, created.out_public.clone())
        .map_err(op("TPM2_Load of the AK"))?;
    let persisted = persist(ctx, ak);
    let flushed = ctx
        .flush_context(ak.into())
        .map_err(op("TPM2_FlushContext of the transient AK"));
    persisted?;
    flushed?;
    Ok((modulus, exponent))
}

/// TPM2_EvictControl: removes whatever is at 0x81000003, then persists `ak` there.
fn persist(ctx: &mut Context, ak: KeyHandle) -> Result<(), ProvisionError> {
    let handle = PersistentTpmHandle::new(AK_PERSISTENT_HANDLE).map_err(op("handle 0x81000003"))?;
    let persistent = Persistent::Persistent(handle);
    if exists(ctx, AK_PERSISTENT_HANDLE).map_err(ProvisionError::Open)? {
        let old = esys_handle(ctx, TpmHandle::Persistent(handle))
            .map_err(op("ESYS handle for the old object at 0x81000003"))?;
        ctx.evict_control(Provision::Owner, old, persistent)
            .map_err(op(
                "TPM2_EvictControl removing the old object at 0x81000003",
            ))?;
    }
    let new = ctx
        .evict_control(Provision::Owner, ak.into(), persistent)
        .map_err(op("TPM2_EvictControl persisting the AK at 0x81000003"))?;
    close(ctx, new).map_err(op("closing the ESYS handle of 0x81000003"))
}

/// (Re)defines NV 0x01400001 with the report's size and writes it.
fn write_hcl_report(ctx: &mut Context, report: &[u8]) -> Result<(), ProvisionError> {
    let index = NvIndexTpmHandle::new(HCL_REPORT_NV_INDEX).map_err(op("NV index 0x01400001"))?;
    if exists(ctx, HCL_REPORT_NV_INDEX).map_err(ProvisionError::Open)? {
        let old: NvIndexHandle = esys_handle(ctx, TpmHandle::NvIndex(index))
            .map_err(op("ESYS handle for NV 0x01400001"))?
            .into();
        ctx.nv_undefine_space(Provision::Owner, old)
            .map_err(op("TPM2_NV_UndefineSpace of NV 0x01400001"))?;
    }
    let attributes = NvIndexAttributesBuilder::new()
        .with_owner_write(true)
        .with_owner_read(true)
        .with_auth_write(true)
        .with_auth_read(true)
        .build()
        .map_err(op("NV 0x01400001 attributes"))?;
    let public = NvPublicBuilder::new()
        .with_nv_index(index)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(report.len())
        .build()
        .map_err(op("NV 0x01400001 public area"))?;
    let handle = ctx
        .nv_define_space(Provision::Owner, None, public)
        .map_err(op("TPM2_NV_DefineSpace of NV 0x01400001"))?;
    let written = nv_write_all(ctx, handle, report).map_err(op("TPM2_NV_Write of NV 0x01400001"));
    let closed = close(ctx, ObjectHandle::from(handle)).map_err(op("closing NV 0x01400001"));
    written?;
    closed
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_vtpm::hcl::HclReport;

    #[test]
    fn the_layout_is_what_coffer_vtpm_parses_and_binds() {
        let modulus = [0xc5; 256];
        let claims = claims(&modulus, 65537, "vm");
        let mut snp = [0u8; HARDWARE_REPORT_SIZE];
        snp[0x50..0x70].copy_from_slice(&Sha256::digest(&claims));
        let bytes = hcl_report(&snp, &claims, SWTPM_NV_INDEX_MAX);
        assert_eq!(bytes.len(), SWTPM_NV_INDEX_MAX);
        let hcl = HclReport::parse(&bytes).unwrap();
        assert_eq!(hcl.claims_json(), claims.as_slice());
        assert!(hcl.check_binding().passed());
        assert_eq!(hcl.ak_public_key().unwrap().modulus(), modulus);
        assert_eq!(hcl.header().version, 2);
        assert_eq!(
            hcl.header().report_size as usize,
            CLAIMS_OFFSET + claims.len()
        );
        // The claims leave room in an swtpm NV index.
        assert!(
            CLAIMS_OFFSET + claims.len() <= SWTPM_NV_INDEX_MAX,
            "{}",
            claims.len()
        );
    }
}
