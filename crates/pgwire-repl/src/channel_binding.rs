//! The `tls-server-end-point` channel binding of SCRAM-SHA-256-PLUS
//! (RFC 5929, section 4.1): a hash of the server's certificate, with the
//! hash function of the certificate's signature algorithm (SHA-256 when
//! that is MD5 or SHA-1). Both ends compute it; the server accepts the
//! SCRAM exchange only if the client's value matches its own, so a server
//! in the middle with another certificate cannot relay the login.

use sha2::Digest as _;
use x509_cert::Certificate;
use x509_cert::der::Decode as _;
use x509_cert::spki::ObjectIdentifier;

/// The hash functions the binding can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// Signature algorithms and the hash their binding uses (the identifiers
/// are checked when the crate compiles).
const ALGORITHMS: &[(ObjectIdentifier, Hash)] = &[
    (oid("1.2.840.113549.1.1.4"), Hash::Sha256), // md5WithRSAEncryption
    (oid("1.2.840.113549.1.1.5"), Hash::Sha256), // sha1WithRSAEncryption
    (oid("1.2.840.113549.1.1.11"), Hash::Sha256), // sha256WithRSAEncryption
    (oid("1.2.840.113549.1.1.12"), Hash::Sha384), // sha384WithRSAEncryption
    (oid("1.2.840.113549.1.1.13"), Hash::Sha512), // sha512WithRSAEncryption
    (oid("1.2.840.10045.4.1"), Hash::Sha256),    // ecdsa-with-SHA1
    (oid("1.2.840.10045.4.3.2"), Hash::Sha256),  // ecdsa-with-SHA256
    (oid("1.2.840.10045.4.3.3"), Hash::Sha384),  // ecdsa-with-SHA384
    (oid("1.2.840.10045.4.3.4"), Hash::Sha512),  // ecdsa-with-SHA512
];

const fn oid(dotted: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(dotted)
}

fn hash_for(algorithm: &ObjectIdentifier) -> Option<Hash> {
    ALGORITHMS
        .iter()
        .find(|(oid, _)| oid == algorithm)
        .map(|&(_, hash)| hash)
}

/// The binding data for a server certificate (DER), or `None` when its
/// signature algorithm names no usable hash (Ed25519, RSA-PSS) or it does
/// not parse; the client then does not offer channel binding.
pub(crate) fn tls_server_end_point(certificate: &[u8]) -> Option<Vec<u8>> {
    let parsed = Certificate::from_der(certificate).ok()?;
    Some(match hash_for(&parsed.signature_algorithm.oid)? {
        Hash::Sha256 => sha2::Sha256::digest(certificate).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(certificate).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(certificate).to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_and_md5_signatures_bind_with_sha256() {
        let sha1 = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");
        assert_eq!(hash_for(&sha1), Some(Hash::Sha256));
        let ecdsa384 = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
        assert_eq!(hash_for(&ecdsa384), Some(Hash::Sha384));
        let ed25519 = ObjectIdentifier::new_unwrap("1.3.101.112");
        assert_eq!(hash_for(&ed25519), None);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(tls_server_end_point(b"not a certificate"), None);
    }
}
