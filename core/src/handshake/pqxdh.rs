//! PQXDH: four X25519 agreements and one ML-KEM-1024 encapsulation, bound to
//! the whole transcript, then the Double Ratchet.
//!
//! Initiator A, responder B:
//!
//! ```text
//! DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)   DH4 = DH(EK_A, OPK_B)?
//! (CT, SS) = ML-KEM-1024.Encaps(PQPK_B)
//! RK || HKa || NHKb = HKDF(0^32, 0xFF^32 || DH1 || DH2 || DH3 [|| DH4] || SS,
//!                          "samizdat/v1/pqxdh" || SHA-256(transcript))
//! AD = "samizdat/v1/session-ad" || IK_A || IK_B
//! ```
//!
//! The identity keys in DH1 and DH2 are the X25519 forms of the Ed25519
//! identities. B's signed prekey is B's first ratchet key.

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};

use crate::{
    DecryptError, PreKeyKind, SessionError,
    address::Address,
    kdf,
    keys::{IdentityKey, IdentityKeyPair, MLKEM_CIPHERTEXT_LEN, MlKemPublicKey, X25519PublicKey, X25519Secret},
    prekeys::{ConsumedPreKeys, PqPreKeyKind, PreKeyBundle, PreKeySet},
    ratchet::{DoubleRatchet, RatchetInit},
    wire::PreKeyHeader,
};

/// Every public value of one handshake, in the order it is hashed.
pub(crate) struct Transcript<'a> {
    pub(crate) initiator_identity: &'a IdentityKey,
    pub(crate) responder_identity: &'a IdentityKey,
    pub(crate) signed_prekey_id: u32,
    pub(crate) signed_prekey: &'a X25519PublicKey,
    pub(crate) one_time_prekey: Option<(u32, &'a X25519PublicKey)>,
    pub(crate) pq_prekey_kind: PqPreKeyKind,
    pub(crate) pq_prekey_id: u32,
    pub(crate) pq_prekey: &'a MlKemPublicKey,
    pub(crate) base_key: &'a X25519PublicKey,
    pub(crate) pq_ciphertext: &'a [u8; MLKEM_CIPHERTEXT_LEN],
    /// The initiator's address (never sent: each side knows it, from itself
    /// or from the transport). Binding it stops a server from relabelling a
    /// first message as coming from another address.
    pub(crate) initiator_address: &'a Address,
    /// The responder's address (from the bundle, or its own).
    pub(crate) responder_address: &'a Address,
}

impl Transcript<'_> {
    /// The transcript bytes:
    ///
    /// ```text
    /// IK_A (32) || IK_B (32) || u32(SPK id) || SPK_B (32)
    /// || 0x00                              (no one-time prekey)
    ///  | 0x01 || u32(OPK id) || OPK_B (32) (with one)
    /// || kind (0x01 one-time, 0x02 last resort) || u32(PQPK id) || PQPK_B (1568)
    /// || EK_A (32) || CT (1568)
    /// || addr(A) || addr(B)    where addr = u32(len(user id)) || user id || u32(device id)
    /// ```
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3300);
        out.extend_from_slice(self.initiator_identity.as_bytes());
        out.extend_from_slice(self.responder_identity.as_bytes());
        out.extend_from_slice(&self.signed_prekey_id.to_be_bytes());
        out.extend_from_slice(self.signed_prekey.as_bytes());
        match self.one_time_prekey {
            None => out.push(0x00),
            Some((id, key)) => {
                out.push(0x01);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(key.as_bytes());
            }
        }
        out.push(self.pq_prekey_kind.transcript_byte());
        out.extend_from_slice(&self.pq_prekey_id.to_be_bytes());
        out.extend_from_slice(self.pq_prekey.as_bytes());
        out.extend_from_slice(self.base_key.as_bytes());
        out.extend_from_slice(self.pq_ciphertext);
        for address in [self.initiator_address, self.responder_address] {
            let user = address.user_id().as_bytes();
            // User ids are at most MAX_USER_ID_LEN (256) bytes.
            out.extend_from_slice(&u32::try_from(user.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(user);
            out.extend_from_slice(&address.device_id().to_be_bytes());
        }
        out
    }

    pub(crate) fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.to_bytes()).into()
    }
}

/// The session's associated data: `"samizdat/v1/session-ad" || IK_A || IK_B`.
pub(crate) fn associated_data(initiator: &IdentityKey, responder: &IdentityKey) -> Vec<u8> {
    [kdf::SESSION_AD_LABEL, initiator.as_bytes(), responder.as_bytes()].concat()
}

fn ratchet_init(
    dh: &[&[u8; 32]],
    kem_secret: &[u8; 32],
    transcript: &Transcript<'_>,
) -> Result<RatchetInit, SessionError> {
    let secrets = kdf::pqxdh(dh, kem_secret, &transcript.hash());
    let ad = associated_data(transcript.initiator_identity, transcript.responder_identity);
    RatchetInit::new(secrets.root_key, secrets.initiator_header_key, secrets.responder_header_key, &ad)
        .map_err(|_| SessionError::Decrypt(DecryptError::Unauthenticated))
}

/// The initiator's result: its ratchet and the header to send with its
/// messages until it hears back.
pub(crate) struct Initiated {
    pub(crate) ratchet: DoubleRatchet,
    pub(crate) header: PreKeyHeader,
}

/// Runs the initiator's side against a verified bundle. Draws, in order:
/// `EK_A` (32 bytes), the ML-KEM encapsulation randomness (32 bytes), and
/// the first ratchet key (32 bytes).
pub(crate) fn initiate<R: CryptoRng + ?Sized>(
    rng: &mut R,
    ours: &IdentityKeyPair,
    our_address: &Address,
    bundle: &PreKeyBundle,
) -> Result<Initiated, SessionError> {
    let weak = || SessionError::Bundle(crate::prekeys::BundleError::SignedPreKey(crate::keys::KeyError::SmallOrder));
    let identity = ours.to_x25519();
    let base = X25519Secret::generate(rng);
    let dh1 = identity.diffie_hellman(&bundle.signed_prekey).ok_or_else(weak)?;
    let dh2 = base.diffie_hellman(&bundle.identity_key.to_x25519()).ok_or_else(weak)?;
    let dh3 = base.diffie_hellman(&bundle.signed_prekey).ok_or_else(weak)?;
    let dh4 = match &bundle.one_time_prekey {
        Some((_, key)) => Some(base.diffie_hellman(key).ok_or_else(weak)?),
        None => None,
    };
    let (ciphertext, kem_secret) = bundle.pq_prekey.encapsulate(rng);
    let our_identity = ours.public_key();
    let base_key = base.public_key();
    let transcript = Transcript {
        initiator_identity: &our_identity,
        responder_identity: &bundle.identity_key,
        signed_prekey_id: bundle.signed_prekey_id,
        signed_prekey: &bundle.signed_prekey,
        one_time_prekey: bundle.one_time_prekey.as_ref().map(|(id, key)| (*id, key)),
        pq_prekey_kind: bundle.pq_prekey_kind,
        pq_prekey_id: bundle.pq_prekey_id,
        pq_prekey: &bundle.pq_prekey,
        base_key: &base_key,
        pq_ciphertext: &ciphertext,
        initiator_address: our_address,
        responder_address: &bundle.address,
    };
    let mut dh: Vec<&[u8; 32]> = vec![&dh1, &dh2, &dh3];
    if let Some(dh4) = &dh4 {
        dh.push(dh4);
    }
    let init = ratchet_init(&dh, &kem_secret, &transcript)?;
    let ratchet = DoubleRatchet::new_initiator(rng, init, &bundle.signed_prekey).map_err(|_| weak())?;
    Ok(Initiated {
        ratchet,
        header: PreKeyHeader {
            identity_key: our_identity,
            base_key,
            signed_prekey_id: bundle.signed_prekey_id,
            one_time_prekey_id: bundle.one_time_prekey_id(),
            pq_prekey_id: bundle.pq_prekey_id,
            pq_ciphertext: ciphertext,
        },
    })
}

/// Runs the responder's side of a prekey header against our prekeys. Uses
/// no randomness and changes nothing: the prekeys to delete are returned.
///
/// # Errors
/// [`SessionError::UnknownPreKey`] for a prekey we do not have;
/// [`DecryptError::Unauthenticated`] (as [`SessionError::Decrypt`]) if a
/// Diffie-Hellman output is all zeros.
pub(crate) fn respond(
    ours: &IdentityKeyPair,
    our_address: &Address,
    peer_address: &Address,
    prekeys: &PreKeySet,
    header: &PreKeyHeader,
) -> Result<(DoubleRatchet, ConsumedPreKeys), SessionError> {
    let unknown = |kind, id| SessionError::UnknownPreKey { kind, id };
    let forged = || SessionError::Decrypt(DecryptError::Unauthenticated);
    let signed =
        prekeys.signed_prekey(header.signed_prekey_id).ok_or(unknown(PreKeyKind::Signed, header.signed_prekey_id))?;
    // Without a one-time prekey nothing is used up: the remembered base key
    // is what stops a replayed first message, from any address.
    if header.one_time_prekey_id.is_none() && prekeys.has_seen_base_key(signed.id, &header.base_key) {
        return Err(SessionError::DuplicatePreKeyMessage);
    }
    let one_time = match header.one_time_prekey_id {
        Some(id) => Some((id, prekeys.one_time_prekey(id).ok_or(unknown(PreKeyKind::OneTime, id))?)),
        None => None,
    };
    let (pq, pq_kind) = prekeys.pq_prekey(header.pq_prekey_id).ok_or(unknown(PreKeyKind::Pq, header.pq_prekey_id))?;

    let identity = ours.to_x25519();
    let dh1 = signed.key.diffie_hellman(&header.identity_key.to_x25519()).ok_or_else(forged)?;
    let dh2 = identity.diffie_hellman(&header.base_key).ok_or_else(forged)?;
    let dh3 = signed.key.diffie_hellman(&header.base_key).ok_or_else(forged)?;
    let dh4 = match &one_time {
        Some((_, key)) => Some(key.diffie_hellman(&header.base_key).ok_or_else(forged)?),
        None => None,
    };
    let kem_secret = pq.key.decapsulate(&header.pq_ciphertext);
    let our_identity = ours.public_key();
    let signed_public = signed.key.public_key();
    let one_time_public = one_time.as_ref().map(|(id, key)| (*id, key.public_key()));
    let transcript = Transcript {
        initiator_identity: &header.identity_key,
        responder_identity: &our_identity,
        signed_prekey_id: signed.id,
        signed_prekey: &signed_public,
        one_time_prekey: one_time_public.as_ref().map(|(id, key)| (*id, key)),
        pq_prekey_kind: pq_kind,
        pq_prekey_id: pq.id,
        pq_prekey: pq.key.public_key(),
        base_key: &header.base_key,
        pq_ciphertext: &header.pq_ciphertext,
        initiator_address: peer_address,
        responder_address: our_address,
    };
    let mut dh: Vec<&[u8; 32]> = vec![&dh1, &dh2, &dh3];
    if let Some(dh4) = &dh4 {
        dh.push(dh4);
    }
    let init = ratchet_init(&dh, &kem_secret, &transcript)?;
    let ratchet = DoubleRatchet::new_responder(init, signed.key.clone());
    let consumed = ConsumedPreKeys {
        one_time: header.one_time_prekey_id,
        pq_one_time: (pq_kind == PqPreKeyKind::OneTime).then_some(pq.id),
        base_key: header.one_time_prekey_id.is_none().then_some((signed.id, header.base_key)),
    };
    Ok((ratchet, consumed))
}
