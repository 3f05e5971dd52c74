//! The signed package file: the component's sections, the `toka:manifest`
//! section, and the publisher's Ed25519 signature over all of them in the
//! WebAssembly tool-conventions format (the `signature` custom section
//! first, as the `wasmsign2` crate and CLI write and verify it). Changing
//! one byte of code or manifest breaks the signature.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use toka_kernel::Digest;
use wasmsign2::{CustomSection, Module, Section, SectionLike as _};

use crate::package::manifest::{MAX_MANIFEST, Manifest, ManifestError};

/// The custom section that holds the manifest.
pub const MANIFEST_SECTION: &str = "toka:manifest";

/// Why a package cannot be built, read or trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// Not a WebAssembly component or module at all, or a section is cut.
    #[error("not a WebAssembly file: {0}")]
    NotWasm(String),
    /// No `toka:manifest` section.
    #[error(
        "the package has no manifest (no `toka:manifest` section): build it with `toka package build`"
    )]
    NoManifest,
    /// More than one `toka:manifest` section.
    #[error("the package has {0} manifest sections; a package has exactly one")]
    ManyManifests(usize),
    /// The manifest is not acceptable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No signature section.
    #[error("the package is not signed")]
    Unsigned,
    /// The signature section does not decode.
    #[error("the package's signature section is corrupt: {0}")]
    CorruptSignature(String),
    /// The signature does not verify with the key (a changed byte, or
    /// another signer).
    #[error(
        "the signature does not verify with {key}: the package was changed after signing, or someone else signed it"
    )]
    BadSignature {
        /// Which key was tried.
        key: String,
    },
    /// No trusted publisher's key verifies the signature.
    #[error(
        "the package is not signed by a trusted publisher (trusted: {}); `toka trust add NAME KEYFILE` trusts one",
        if trusted.is_empty() { "none".to_owned() } else { trusted.join(", ") }
    )]
    Untrusted {
        /// The trust store's names.
        trusted: Vec<String>,
    },
    /// An upgrade signed by another publisher than the installed version.
    #[error(
        "package `{package}` is installed from publisher `{installed}`, but this one is signed by `{signed}`; uninstall it first"
    )]
    OtherPublisher {
        /// The package.
        package: String,
        /// Who signed the installed version.
        installed: String,
        /// Who signed this one.
        signed: String,
    },
    /// An approved right the package does not request.
    #[error(
        "`{right}` is wider than anything the package requests (requested: {}); an approval can only narrow a request",
        if requested.is_empty() { "nothing".to_owned() } else { requested.join(", ") }
    )]
    ApprovalWidens {
        /// The approved right.
        right: String,
        /// What the package requests.
        requested: Vec<String>,
    },
    /// Rights requested anew that the operator has not approved.
    #[error(
        "the package requests {} without an approval: pass --yes to approve every requested right, or --approve RIGHT for each one to grant",
        rights.join(", ")
    )]
    ApprovalNeeded {
        /// The rights.
        rights: Vec<String>,
    },
    /// No installed package of that name.
    #[error("no package named `{0}` is installed (see `toka trust list`)")]
    NotInstalled(String),
    /// The package's install token is revoked.
    #[error(
        "package `{0}`'s install token is revoked (its publisher is no longer trusted): install it again from a trusted publisher"
    )]
    Revoked(String),
    /// A right asked of an installed package's token that it does not hold.
    #[error("`{right}` is not among the rights package `{package}` was granted ({})", if granted.is_empty() { "none".to_owned() } else { granted.join(", ") })]
    NotGranted {
        /// The package.
        package: String,
        /// The right asked for.
        right: String,
        /// What the package holds.
        granted: Vec<String>,
    },
    /// A key file cannot be read or is not an Ed25519 key.
    #[error("{path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file cannot be written.
    #[error("{path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A publisher's secret key (the raw format `wasmsign2` reads and writes).
pub struct SigningKey(wasmsign2::SecretKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// A publisher's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherKey(wasmsign2::PublicKey);

impl SigningKey {
    /// Reads a secret key file (raw, PEM, DER or OpenSSH, as `wasmsign2`
    /// accepts them).
    ///
    /// # Errors
    ///
    /// [`PackageError::Key`].
    pub fn from_file(path: &Path) -> Result<SigningKey, PackageError> {
        let bytes = read_key(path)?;
        wasmsign2::SecretKey::from_any(&bytes)
            .map(SigningKey)
            .map_err(|e| key_error(path, &e))
    }
}

impl PublisherKey {
    /// Reads a public key file (raw, PEM, DER or OpenSSH).
    ///
    /// # Errors
    ///
    /// [`PackageError::Key`].
    pub fn from_file(path: &Path) -> Result<PublisherKey, PackageError> {
        let bytes = read_key(path)?;
        PublisherKey::from_bytes(&bytes).map_err(|reason| PackageError::Key {
            path: path.to_owned(),
            reason,
        })
    }

    /// Reads a public key from the bytes of a key file.
    ///
    /// # Errors
    ///
    /// Why the bytes are not an Ed25519 public key.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublisherKey, String> {
        wasmsign2::PublicKey::from_any(bytes)
            .map(|k| PublisherKey(wasmsign2::PublicKey { key_id: None, ..k }))
            .map_err(|e| format!("not an Ed25519 public key: {e}"))
    }

    /// The key in the raw format (`0x01` then 32 bytes), as stored.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// A short, stable name for the key: `ed25519:` and the first 16 hex
    /// digits of its BLAKE3 digest.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        format!(
            "ed25519:{}",
            &Digest::of(&self.to_bytes()).to_string()[..16]
        )
    }
}

/// Writes a new key pair: `NAME.key` (the secret key, owner-only) and
/// `NAME.pub`, in the raw format the `wasmsign2` CLI reads. Refuses to
/// overwrite either.
///
/// # Errors
///
/// [`PackageError::Write`].
pub fn keygen(out: &Path) -> Result<(PathBuf, PathBuf), PackageError> {
    let secret = out.with_extension("key");
    let public = out.with_extension("pub");
    for path in [&secret, &public] {
        if path.exists() {
            return Err(PackageError::Write {
                path: path.clone(),
                reason: "exists already; choose another --out or remove it".into(),
            });
        }
    }
    let pair = wasmsign2::KeyPair::generate();
    write_new(&secret, &pair.sk.to_bytes(), 0o600)?;
    if let Err(e) = write_new(&public, &pair.pk.to_bytes(), 0o644) {
        let _ = std::fs::remove_file(&secret);
        return Err(e);
    }
    Ok((secret, public))
}

/// A package read from its bytes (not yet verified: see
/// [`Package::verify`]).
#[derive(Debug, Clone)]
pub struct Package {
    bytes: Vec<u8>,
    manifest: Manifest,
    signed_hash: [u8; 32],
    signed: bool,
}

impl Package {
    /// Builds a package: `component` with `manifest` embedded, signed with
    /// `key`. A manifest or signature the component carried already is
    /// replaced.
    ///
    /// # Errors
    ///
    /// [`PackageError::NotWasm`] when `component` is not WebAssembly.
    pub fn build(
        component: &[u8],
        manifest: &Manifest,
        key: &SigningKey,
    ) -> Result<Vec<u8>, PackageError> {
        let mut module = parse(component)?;
        module
            .sections
            .retain(|s| !is_manifest(s) && !s.is_signature_header());
        module.sections.push(Section::Custom(CustomSection::new(
            MANIFEST_SECTION.to_owned(),
            manifest.to_section(),
        )));
        let signed = key
            .0
            .sign(module, None)
            .map_err(|e| PackageError::NotWasm(e.to_string()))?;
        let mut out = Vec::with_capacity(component.len() + 1024);
        signed
            .serialize(&mut out)
            .map_err(|e| PackageError::NotWasm(e.to_string()))?;
        Ok(out)
    }

    /// Reads a package: its manifest, and whether it carries a signature.
    ///
    /// # Errors
    ///
    /// [`PackageError`] naming the first problem.
    pub fn read(bytes: Vec<u8>) -> Result<Package, PackageError> {
        let module = parse(&bytes)?;
        let manifests: Vec<&CustomSection> = module
            .sections
            .iter()
            .filter_map(|s| match s {
                Section::Custom(c) if c.name() == MANIFEST_SECTION => Some(c),
                _ => None,
            })
            .collect();
        let manifest = match manifests.as_slice() {
            [] => return Err(PackageError::NoManifest),
            [one] => {
                let payload = one.payload();
                if payload.len() > MAX_MANIFEST {
                    return Err(ManifestError::TooLarge {
                        size: payload.len(),
                        max: MAX_MANIFEST,
                    }
                    .into());
                }
                Manifest::from_section(payload)?
            }
            many => return Err(PackageError::ManyManifests(many.len())),
        };
        let mut signed = false;
        let mut hasher = Sha256(wasmsign2::reexports::hmac_sha256::Hash::new());
        for section in &module.sections {
            if section.is_signature_header() {
                if let Section::Custom(c) = section {
                    c.signature_data()
                        .map_err(|e| PackageError::CorruptSignature(e.to_string()))?;
                }
                signed = true;
                continue;
            }
            section
                .serialize(&mut hasher)
                .map_err(|e| PackageError::NotWasm(e.to_string()))?;
        }
        Ok(Package {
            signed_hash: hasher.0.finalize(),
            bytes,
            manifest,
            signed,
        })
    }

    /// Checks the signature with `key`.
    ///
    /// # Errors
    ///
    /// [`PackageError::Unsigned`], [`PackageError::CorruptSignature`] or
    /// [`PackageError::BadSignature`].
    pub fn verify(&self, key: &PublisherKey) -> Result<(), PackageError> {
        if !self.signed {
            return Err(PackageError::Unsigned);
        }
        key.0
            .verify(&mut Cursor::new(&self.bytes), None)
            .map_err(|e| match e {
                wasmsign2::WSError::NoSignatures => PackageError::Unsigned,
                wasmsign2::WSError::VerificationFailed => PackageError::BadSignature {
                    key: key.fingerprint(),
                },
                other => PackageError::CorruptSignature(other.to_string()),
            })
    }

    /// The first of `keys` (name, key) whose signature the package
    /// carries, if any.
    pub fn signed_by<'k>(
        &self,
        keys: impl IntoIterator<Item = (&'k str, &'k PublisherKey)>,
    ) -> Option<&'k str> {
        keys.into_iter()
            .find(|(_, key)| self.verify(key).is_ok())
            .map(|(name, _)| name)
    }

    /// The manifest.
    #[must_use]
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The package's bytes: what is installed and run (the runtime ignores
    /// the custom sections).
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether it carries a signature section.
    #[must_use]
    pub fn is_signed(&self) -> bool {
        self.signed
    }

    /// The kernel's digest of the package (BLAKE3 of its bytes): what
    /// `spawn COMPONENT` rights and install tokens name.
    #[must_use]
    pub fn digest(&self) -> Digest {
        Digest::of(&self.bytes)
    }

    /// The hash the signature covers (SHA-256 of every section but the
    /// signature, as the tool conventions define it), hex.
    #[must_use]
    pub fn signed_hash(&self) -> String {
        toka_kernel::to_hex(&self.signed_hash)
    }
}

fn parse(bytes: &[u8]) -> Result<Module, PackageError> {
    super::lengths::check(bytes).map_err(PackageError::NotWasm)?;
    Module::deserialize(&mut Cursor::new(bytes)).map_err(|e| PackageError::NotWasm(e.to_string()))
}

fn is_manifest(section: &Section) -> bool {
    matches!(section, Section::Custom(c) if c.name() == MANIFEST_SECTION)
}

/// SHA-256 as a writer, for the sections' serialization.
struct Sha256(wasmsign2::reexports::hmac_sha256::Hash);

impl Write for Sha256 {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The largest key file read.
const MAX_KEY_FILE: u64 = 16 * 1024;

fn read_key(path: &Path) -> Result<Vec<u8>, PackageError> {
    let fail = |reason: String| PackageError::Key {
        path: path.to_owned(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string()))?
        .len();
    if size > MAX_KEY_FILE {
        return Err(fail(format!("{size} bytes: not a key file")));
    }
    std::fs::read(path).map_err(|e| fail(e.to_string()))
}

fn key_error(path: &Path, e: &wasmsign2::WSError) -> PackageError {
    PackageError::Key {
        path: path.to_owned(),
        reason: format!("not an Ed25519 secret key: {e}"),
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PackageError> {
    let fail = |e: std::io::Error| PackageError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest::from_toml(
            "name = \"hello\"\nversion = \"1.0.0\"\npublisher = \"acme\"\nrights = [\"observe\"]\n",
        )
        .unwrap()
    }

    /// The smallest component: its preamble and nothing else.
    const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn keys(dir: &Path, name: &str) -> (SigningKey, PublisherKey) {
        let (secret, public) = keygen(&dir.join(name)).unwrap();
        (
            SigningKey::from_file(&secret).unwrap(),
            PublisherKey::from_file(&public).unwrap(),
        )
    }

    #[test]
    fn a_built_package_verifies_and_any_changed_byte_breaks_it() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keys(dir.path(), "acme");
        let (_, other) = keys(dir.path(), "mallory");
        let bytes = Package::build(COMPONENT, &manifest(), &secret).unwrap();
        let package = Package::read(bytes.clone()).unwrap();
        assert_eq!(package.manifest(), &manifest());
        package.verify(&public).unwrap();
        assert!(matches!(
            package.verify(&other),
            Err(PackageError::BadSignature { .. })
        ));
        assert_eq!(
            package.signed_by([("mallory", &other), ("acme", &public)]),
            Some("acme")
        );
        // A byte of the first section, of the manifest section's header and
        // of the manifest: each change is caught, by the parser or by the
        // signature.
        let manifest_start =
            bytes.len() - (manifest().to_section().len() + MANIFEST_SECTION.len() + 4);
        for i in [8, manifest_start, bytes.len() - 1] {
            let mut changed = bytes.clone();
            changed[i] ^= 1;
            let verdict = Package::read(changed).and_then(|p| p.verify(&public));
            assert!(verdict.is_err(), "a change at byte {i} went unnoticed");
        }
        // Rebuilding with another manifest changes the signed hash.
        let mut wider = manifest();
        wider.rights.push("state".into());
        let rebuilt = Package::read(Package::build(COMPONENT, &wider, &secret).unwrap()).unwrap();
        assert_ne!(rebuilt.signed_hash(), package.signed_hash());
        assert_ne!(rebuilt.digest(), package.digest());
    }

    #[test]
    fn unsigned_manifestless_and_non_wasm_files_are_told_apart() {
        assert!(matches!(
            Package::read(COMPONENT.to_vec()),
            Err(PackageError::NoManifest)
        ));
        assert!(matches!(
            Package::read(b"not wasm".to_vec()),
            Err(PackageError::NotWasm(_))
        ));
        let mut module = parse(COMPONENT).unwrap();
        module.sections.push(Section::Custom(CustomSection::new(
            MANIFEST_SECTION.into(),
            manifest().to_section(),
        )));
        let mut unsigned = Vec::new();
        module.serialize(&mut unsigned).unwrap();
        let package = Package::read(unsigned).unwrap();
        assert!(!package.is_signed());
        let dir = tempfile::tempdir().unwrap();
        let (_, public) = keys(dir.path(), "acme");
        assert!(matches!(
            package.verify(&public),
            Err(PackageError::Unsigned)
        ));
        // keygen does not overwrite.
        assert!(keygen(&dir.path().join("acme")).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("acme.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0);
        }
    }
}
