//! The simulation root: certificates, the VCEK's private key and the sealing secret.
//!
//! The ARK and ASK private keys sign the chain once, at generation, and are then dropped (and
//! wiped): nobody, not even this crate, can issue another certificate under a given `ARK-Sim`.
//! What is kept is what the simulated secure processor needs at run time: the VCEK's P-384 key
//! (to sign reports) and a 32-byte sealing secret (to derive keys).
//!
//! Files of a key directory (certificates 0644, keys 0600, created new, never overwritten):
//! `ark.pem`, `ask.pem`, `vcek.pem`, `vcek.key` (hex of the P-384 scalar), `seal.key` (hex of
//! the 32-byte sealing secret). `seal.key` is written last and marks a complete root.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use hkdf::Hkdf;
use p384::ecdsa::SigningKey as EcSigningKey;
use rand_core::{CryptoRngCore, OsRng};
use rsa::pkcs8::EncodePublicKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use rsa::RsaPrivateKey;
use sha2::{Sha256, Sha384};
use x509_cert::der::asn1::{BitString, Ia5String, OctetString, UtcTime};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::pem::LineEnding;
use x509_cert::der::{Any, Decode, Encode};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};
use zeroize::Zeroizing;

use crate::error::SimError;

/// The organisation in every simulated certificate's subject and issuer.
pub const SIM_ORGANIZATION: &str = "Coffer simulation (NOT AMD)";

const ARK_NAME: &str =
    "CN=ARK-Sim,OU=Simulated secure processor for CI,O=Coffer simulation (NOT AMD)";
const ASK_NAME: &str =
    "CN=SEV-Sim,OU=Simulated secure processor for CI,O=Coffer simulation (NOT AMD)";
const VCEK_NAME: &str =
    "CN=SEV-VCEK-Sim,OU=Simulated secure processor for CI,O=Coffer simulation (NOT AMD)";

/// id-RSASSA-PSS (RFC 4055).
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
/// id-ecPublicKey (RFC 5480).
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp384r1 (RFC 5480).
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// RSASSA-PSS-params { SHA-384, MGF1(SHA-384), salt 48 } in DER, as AMD's certificates carry.
const PSS_SHA384_PARAMS: &[u8] = &[
    0x30, 0x34, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x02, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0xa2, 0x03, 0x02, 0x01, 0x30,
];

// AMD VCEK extensions (KDS specification #57230), as coffer-verify reads them.
const OID_STRUCT_VERSION: &str = "1.3.6.1.4.1.3704.1.1";
const OID_PRODUCT_NAME: &str = "1.3.6.1.4.1.3704.1.2";
const OID_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_HW_ID: &str = "1.3.6.1.4.1.3704.1.4";

/// Validity of the simulated certificates: from a day before generation, for 20 years (kept
/// before 2050 so every date is a UTCTime, as RFC 5280 wants).
const BACKDATE: Duration = Duration::from_secs(24 * 3600);
const LIFETIME: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// HKDF-SHA-256 salt and info prefix of [`SimRoot::derive_key`] (domain separation; bump the
/// version if the derivation ever changes, since sealed data depends on it).
const DERIVE_SALT: &[u8] = b"coffer-sim derive_key salt v1";
const DERIVE_INFO: &[u8] = b"coffer-sim MSG_KEY_REQ v1";

const ARK_FILE: &str = "ark.pem";
const ASK_FILE: &str = "ask.pem";
const VCEK_FILE: &str = "vcek.pem";
const VCEK_KEY_FILE: &str = "vcek.key";
const SEAL_KEY_FILE: &str = "seal.key";

/// The simulated platform's TCB (Genoa layout), carried in the VCEK and every report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimTcb {
    /// Boot loader SPL.
    pub bl: u8,
    /// TEE SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub ucode: u8,
}

impl SimTcb {
    /// The TCB of a freshly generated root (values of a current Genoa).
    pub const DEFAULT: SimTcb = SimTcb {
        bl: 9,
        tee: 0,
        snp: 23,
        ucode: 84,
    };

    /// The 8-byte TCB_VERSION in Genoa's layout.
    pub fn raw(self) -> [u8; 8] {
        [self.bl, self.tee, 0, 0, 0, 0, self.snp, self.ucode]
    }
}

/// A simulated AMD secure processor: the ARK → ASK → VCEK chain, the VCEK's signing key and the
/// sealing secret. `Debug` prints the certificates' fingerprints and the chip ID, never a key.
pub struct SimRoot {
    ark_der: Vec<u8>,
    ask_der: Vec<u8>,
    vcek_der: Vec<u8>,
    /// Zeroized on drop by p384 itself.
    vcek_key: EcSigningKey,
    seal_secret: Zeroizing<[u8; 32]>,
    chip_id: [u8; 64],
    tcb: SimTcb,
}

impl fmt::Debug for SimRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use sha2::Digest;
        let fp = |der: &[u8]| hex::encode(Sha256::digest(der));
        f.debug_struct("SimRoot")
            .field("ark_sha256", &fp(&self.ark_der))
            .field("ask_sha256", &fp(&self.ask_der))
            .field("vcek_sha256", &fp(&self.vcek_der))
            .field("chip_id", &hex::encode(self.chip_id))
            .field("tcb", &self.tcb)
            .field("vcek_key", &"[redacted]")
            .field("seal_secret", &"[redacted]")
            .finish()
    }
}

impl SimRoot {
    /// Generates a new chain: two RSA-4096 keys (seconds in release, more in debug), a P-384
    /// VCEK key, a random chip ID and sealing secret, with [`SimTcb::DEFAULT`].
    pub fn generate(rng: &mut impl CryptoRngCore) -> Result<Self, SimError> {
        Self::generate_with_tcb(rng, SimTcb::DEFAULT)
    }

    /// As [`SimRoot::generate`], with a chosen TCB.
    pub fn generate_with_tcb(rng: &mut impl CryptoRngCore, tcb: SimTcb) -> Result<Self, SimError> {
        let rsa_err = |what| {
            move |e: rsa::Error| SimError::Rsa {
                what,
                reason: e.to_string(),
            }
        };
        let ark_key = RsaPrivateKey::new(rng, 4096).map_err(rsa_err("ARK key generation"))?;
        let ask_key = RsaPrivateKey::new(rng, 4096).map_err(rsa_err("ASK key generation"))?;
        let vcek_key = EcSigningKey::random(rng);
        let mut chip_id = [0u8; 64];
        rng.fill_bytes(&mut chip_id);
        let mut seal_secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seal_secret.as_mut());

        let ark_spki = rsa_spki(&ark_key)?;
        let ask_spki = rsa_spki(&ask_key)?;
        let vcek_spki = p384_spki(&vcek_key)?;
        let ark_der = issue(rng, &ark_key, ARK_NAME, ARK_NAME, 1, ark_spki, Vec::new())?;
        let ask_der = issue(rng, &ark_key, ARK_NAME, ASK_NAME, 2, ask_spki, Vec::new())?;
        let vcek_der = issue(
            rng,
            &ask_key,
            ASK_NAME,
            VCEK_NAME,
            3,
            vcek_spki,
            vcek_extensions(&chip_id, tcb)?,
        )?;
        // ark_key and ask_key are dropped (and zeroized by rsa) here.
        Ok(Self {
            ark_der,
            ask_der,
            vcek_der,
            vcek_key,
            seal_secret,
            chip_id,
            tcb,
        })
    }

    /// Loads the root kept in `dir`, or generates one with the OS RNG and keeps it there (the
    /// directory is created if needed). One root per developer machine or CI cache: the
    /// certificates then stay the same across runs. Key files must be mode 0600.
    pub fn load_or_generate(dir: &Path) -> Result<Self, SimError> {
        if dir.join(SEAL_KEY_FILE).exists() {
            return Self::load(dir);
        }
        let root = Self::generate(&mut OsRng)?;
        root.save(dir)?;
        Ok(root)
    }

    /// Loads a root saved by [`SimRoot::load_or_generate`].
    pub fn load(dir: &Path) -> Result<Self, SimError> {
        for name in [ARK_FILE, ASK_FILE, VCEK_FILE, VCEK_KEY_FILE, SEAL_KEY_FILE] {
            if !dir.join(name).exists() {
                return Err(SimError::Incomplete {
                    dir: dir.to_owned(),
                    missing: name,
                });
            }
        }
        let ark_der = read_pem(&dir.join(ARK_FILE))?;
        let ask_der = read_pem(&dir.join(ASK_FILE))?;
        let vcek_der = read_pem(&dir.join(VCEK_FILE))?;
        let key_path = dir.join(VCEK_KEY_FILE);
        let scalar = read_secret_hex(&key_path, 48)?;
        let vcek_key = EcSigningKey::from_slice(&scalar).map_err(|_| SimError::KeyFile {
            path: key_path.clone(),
            reason: "not a valid P-384 private scalar".into(),
        })?;
        let seal_path = dir.join(SEAL_KEY_FILE);
        let seal = read_secret_hex(&seal_path, 32)?;
        let mut seal_secret = Zeroizing::new([0u8; 32]);
        seal_secret.copy_from_slice(&seal);

        let vcek = Certificate::from_der(&vcek_der).map_err(enc("VCEK certificate"))?;
        let point = vcek_key.verifying_key().to_encoded_point(false);
        if vcek
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
            != point.as_bytes()
        {
            return Err(SimError::Vcek(format!(
                "certificate in {} is not for the key in {}",
                dir.join(VCEK_FILE).display(),
                key_path.display()
            )));
        }
        let (chip_id, tcb) = read_vcek_extensions(&vcek)?;
        Ok(Self {
            ark_der,
            ask_der,
            vcek_der,
            vcek_key,
            seal_secret,
            chip_id,
            tcb,
        })
    }

    /// Writes the root to `dir`: certificates as PEM, keys 0600, each file created new.
    pub fn save(&self, dir: &Path) -> Result<(), SimError> {
        fs::create_dir_all(dir).map_err(io("creating directory", dir))?;
        for (name, der) in [
            (ARK_FILE, &self.ark_der),
            (ASK_FILE, &self.ask_der),
            (VCEK_FILE, &self.vcek_der),
        ] {
            let pem = x509_cert::der::pem::encode_string("CERTIFICATE", LineEnding::LF, der)
                .map_err(enc("PEM"))?;
            write_new(&dir.join(name), pem.as_bytes(), 0o644)?;
        }
        let scalar = Zeroizing::new(hex::encode(self.vcek_key.to_bytes()) + "\n");
        write_new(&dir.join(VCEK_KEY_FILE), scalar.as_bytes(), 0o600)?;
        let seal = Zeroizing::new(hex::encode(self.seal_secret.as_ref()) + "\n");
        write_new(&dir.join(SEAL_KEY_FILE), seal.as_bytes(), 0o600)?;
        Ok(())
    }

    /// The ARK-Sim certificate (DER): the simulation trust anchor to give a verifier.
    pub fn ark_der(&self) -> &[u8] {
        &self.ark_der
    }

    /// The SEV-Sim (ASK) certificate (DER).
    pub fn ask_der(&self) -> &[u8] {
        &self.ask_der
    }

    /// The VCEK certificate (DER) that signs reports.
    pub fn vcek_der(&self) -> &[u8] {
        &self.vcek_der
    }

    /// The simulated chip ID (the VCEK's hwID, and CHIP_ID of every report).
    pub fn chip_id(&self) -> [u8; 64] {
        self.chip_id
    }

    /// The simulated TCB (the VCEK's SPLs, and every TCB of every report).
    pub fn tcb(&self) -> SimTcb {
        self.tcb
    }

    pub(crate) fn vcek_key(&self) -> &EcSigningKey {
        &self.vcek_key
    }

    /// A 32-byte sealing key bound to `measurement`, `policy` and `context`: the simulated
    /// equivalent of SNP `MSG_KEY_REQ` with the VCEK as root key and the measurement and guest
    /// policy mixed in.
    ///
    /// Derivation: HKDF-SHA-256 with IKM = this root's 32-byte sealing secret (`seal.key`), salt
    /// `"coffer-sim derive_key salt v1"`, info = `"coffer-sim MSG_KEY_REQ v1"` ‖ measurement (48)
    /// ‖ policy (8, little-endian) ‖ len(context) (8, little-endian) ‖ context. The length prefix
    /// keeps (measurement, policy, context) triples unambiguous.
    pub fn derive_key(
        &self,
        measurement: &[u8; 48],
        policy: u64,
        context: &[u8],
    ) -> Zeroizing<[u8; 32]> {
        let hkdf = Hkdf::<Sha256>::new(Some(DERIVE_SALT), self.seal_secret.as_ref());
        let context_len = (context.len() as u64).to_le_bytes();
        let policy = policy.to_le_bytes();
        let info: [&[u8]; 5] = [DERIVE_INFO, measurement, &policy, &context_len, context];
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA-256's 255 * 32-byte limit: expand cannot fail.
        let _ = hkdf.expand_multi_info(&info, out.as_mut());
        out
    }
}

fn enc<E: fmt::Display>(what: &'static str) -> impl Fn(E) -> SimError {
    move |e| SimError::Encoding {
        what,
        reason: e.to_string(),
    }
}

fn io(what: &'static str, path: &Path) -> impl Fn(std::io::Error) -> SimError {
    let path = path.to_owned();
    move |source| SimError::Io {
        what,
        path: path.clone(),
        source,
    }
}

fn rsa_spki(key: &RsaPrivateKey) -> Result<SubjectPublicKeyInfoOwned, SimError> {
    let der = key
        .to_public_key()
        .to_public_key_der()
        .map_err(enc("RSA public key"))?;
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(enc("RSA public key"))
}

fn p384_spki(key: &EcSigningKey) -> Result<SubjectPublicKeyInfoOwned, SimError> {
    let point = key.verifying_key().to_encoded_point(false);
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: EC_PUBLIC_KEY,
            parameters: Some(Any::encode_from(&SECP384R1).map_err(enc("P-384 curve"))?),
        },
        subject_public_key: BitString::from_bytes(point.as_bytes())
            .map_err(enc("P-384 public key"))?,
    })
}

fn extension(oid: &str, value: Vec<u8>) -> Result<Extension, SimError> {
    Ok(Extension {
        extn_id: ObjectIdentifier::new(oid).map_err(enc("extension OID"))?,
        critical: false,
        extn_value: OctetString::new(value).map_err(enc("extension value"))?,
    })
}

fn vcek_extensions(chip_id: &[u8; 64], tcb: SimTcb) -> Result<Vec<Extension>, SimError> {
    let int = |v: u8| v.to_der().map_err(enc("SPL"));
    let product = Ia5String::new("Genoa")
        .and_then(|s| s.to_der())
        .map_err(enc("productName"))?;
    Ok(vec![
        extension(OID_STRUCT_VERSION, int(0)?)?,
        extension(OID_PRODUCT_NAME, product)?,
        extension(OID_BL_SPL, int(tcb.bl)?)?,
        extension(OID_TEE_SPL, int(tcb.tee)?)?,
        extension(OID_SNP_SPL, int(tcb.snp)?)?,
        extension(OID_UCODE_SPL, int(tcb.ucode)?)?,
        // AMD writes hwID as the 64 raw bytes, no OCTET STRING inside.
        extension(OID_HW_ID, chip_id.to_vec())?,
    ])
}

fn read_vcek_extensions(vcek: &Certificate) -> Result<([u8; 64], SimTcb), SimError> {
    let exts = vcek
        .tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or_default();
    let find = |oid: &'static str| {
        exts.iter()
            .find(|e| e.extn_id.to_string() == oid)
            .map(|e| e.extn_value.as_bytes())
            .ok_or_else(|| SimError::Vcek(format!("has no extension {oid}")))
    };
    let spl = |oid: &'static str| -> Result<u8, SimError> {
        u8::from_der(find(oid)?).map_err(|e| SimError::Vcek(format!("extension {oid}: {e}")))
    };
    let chip_id: [u8; 64] = find(OID_HW_ID)?
        .try_into()
        .map_err(|_| SimError::Vcek("hwID is not 64 bytes".into()))?;
    let tcb = SimTcb {
        bl: spl(OID_BL_SPL)?,
        tee: spl(OID_TEE_SPL)?,
        snp: spl(OID_SNP_SPL)?,
        ucode: spl(OID_UCODE_SPL)?,
    };
    Ok((chip_id, tcb))
}

/// Issues one certificate signed by `issuer_key` with AMD's RSASSA-PSS SHA-384 profile.
fn issue(
    rng: &mut impl CryptoRngCore,
    issuer_key: &RsaPrivateKey,
    issuer: &str,
    subject: &str,
    serial: u8,
    spki: SubjectPublicKeyInfoOwned,
    extensions: Vec<Extension>,
) -> Result<Vec<u8>, SimError> {
    let algorithm = AlgorithmIdentifierOwned {
        oid: RSASSA_PSS,
        parameters: Some(Any::from_der(PSS_SHA384_PARAMS).map_err(enc("PSS parameters"))?),
    };
    let now = SystemTime::now();
    let time = |t: Option<SystemTime>| -> Result<Time, SimError> {
        let t = t.ok_or_else(|| SimError::Encoding {
            what: "validity",
            reason: "time out of range".into(),
        })?;
        Ok(Time::UtcTime(
            UtcTime::from_system_time(t).map_err(enc("validity"))?,
        ))
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&[serial]).map_err(enc("serial number"))?,
        signature: algorithm.clone(),
        issuer: Name::from_str(issuer).map_err(enc("issuer name"))?,
        validity: Validity {
            not_before: time(now.checked_sub(BACKDATE))?,
            not_after: time(now.checked_add(LIFETIME))?,
        },
        subject: Name::from_str(subject).map_err(enc("subject name"))?,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: (!extensions.is_empty()).then_some(extensions),
    };
    let tbs_der = tbs.to_der().map_err(enc("TBS certificate"))?;
    let signer = rsa::pss::BlindedSigningKey::<Sha384>::new(issuer_key.clone());
    let signature = signer
        .try_sign_with_rng(rng, &tbs_der)
        .map_err(|e| SimError::Rsa {
            what: "RSASSA-PSS signing",
            reason: e.to_string(),
        })?
        .to_vec();
    Certificate {
        tbs_certificate: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(&signature).map_err(enc("signature"))?,
    }
    .to_der()
    .map_err(enc("certificate"))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, SimError> {
    let text = fs::read(path).map_err(io("reading", path))?;
    let (label, der) = x509_cert::der::pem::decode_vec(&text).map_err(|e| SimError::KeyFile {
        path: path.to_owned(),
        reason: format!("not PEM: {e}"),
    })?;
    if label != "CERTIFICATE" {
        return Err(SimError::KeyFile {
            path: path.to_owned(),
            reason: format!("PEM label {label}, expected CERTIFICATE"),
        });
    }
    Ok(der)
}

/// Reads a hex key file of `len` bytes, refusing one that group or others may access.
fn read_secret_hex(path: &Path, len: usize) -> Result<Zeroizing<Vec<u8>>, SimError> {
    let mode = fs::metadata(path)
        .map_err(io("reading", path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(SimError::KeyFileMode {
            path: path.to_owned(),
            mode,
        });
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(io("reading", path))?);
    let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| SimError::KeyFile {
        path: path.to_owned(),
        reason: "not hex".into(),
    })?);
    if bytes.len() != len {
        return Err(SimError::KeyFile {
            path: path.to_owned(),
            reason: format!("{} bytes, expected {len}", bytes.len()),
        });
    }
    Ok(bytes)
}

/// Creates `path` (which must not exist) with `mode` and writes `bytes`.
fn write_new(path: &PathBuf, bytes: &[u8], mode: u32) -> Result<(), SimError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("writing", path))?;
    // The umask may have cleared bits of `mode` but never adds any: 0600 stays at most 0600.
    file.write_all(bytes).map_err(io("writing", path))?;
    file.sync_all().map_err(io("writing", path))
}
