//! One session state: a Double Ratchet and what the handshake bound it to.

use std::fmt;

use samizdat_proto::storage;

use crate::{
    DecodeError,
    keys::{IdentityKey, MLKEM_CIPHERTEXT_LEN, X25519PublicKey, fixed},
    ratchet::DoubleRatchet,
    wire::PreKeyHeader,
};

/// A session state.
pub(crate) struct SessionState {
    pub(crate) ratchet: DoubleRatchet,
    pub(crate) remote_identity: IdentityKey,
    /// The initiator's ephemeral key of the handshake that built this state.
    pub(crate) base_key: X25519PublicKey,
    pub(crate) initiator: bool,
    /// The prekey header to send until the first reply decrypts (initiator only).
    pub(crate) pending_prekey: Option<PreKeyHeader>,
}

impl SessionState {
    pub(crate) fn to_record(&self) -> storage::SessionState {
        storage::SessionState {
            ratchet: Some(self.ratchet.to_record()),
            remote_identity: self.remote_identity.as_bytes().to_vec(),
            base_key: self.base_key.as_bytes().to_vec(),
            initiator: self.initiator,
            pending_prekey: self.pending_prekey.as_ref().map(|h| storage::PendingPreKey {
                signed_prekey_id: h.signed_prekey_id,
                one_time_prekey_id: h.one_time_prekey_id,
                pq_prekey_id: h.pq_prekey_id,
                pq_ciphertext: h.pq_ciphertext.to_vec(),
                identity_key: h.identity_key.as_bytes().to_vec(),
            }),
        }
    }

    pub(crate) fn from_record(record: &storage::SessionState) -> Result<Self, DecodeError> {
        let ratchet = DoubleRatchet::from_record(record.ratchet.as_ref().ok_or(DecodeError::MissingField("ratchet"))?)?;
        let remote_identity = IdentityKey::from_stored_slice(&record.remote_identity, "remote_identity")?;
        let base_key = X25519PublicKey::from_slice(&record.base_key, "base_key")?;
        let pending_prekey = match &record.pending_prekey {
            None => None,
            Some(p) if record.initiator => Some(PreKeyHeader {
                identity_key: IdentityKey::from_stored_slice(&p.identity_key, "pending_prekey.identity_key")?,
                base_key,
                signed_prekey_id: p.signed_prekey_id,
                one_time_prekey_id: p.one_time_prekey_id,
                pq_prekey_id: p.pq_prekey_id,
                pq_ciphertext: Box::new(fixed::<MLKEM_CIPHERTEXT_LEN>(
                    &p.pq_ciphertext,
                    "pending_prekey.pq_ciphertext",
                )?),
            }),
            Some(_) => return Err(DecodeError::InvalidValue("pending_prekey")),
        };
        Ok(Self { ratchet, remote_identity, base_key, initiator: record.initiator, pending_prekey })
    }
}

impl fmt::Debug for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionState")
            .field("remote_identity", &self.remote_identity)
            .field("initiator", &self.initiator)
            .field("pending_prekey", &self.pending_prekey.is_some())
            .field("ratchet", &self.ratchet)
            .finish_non_exhaustive()
    }
}
