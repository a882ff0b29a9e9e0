//! The group message on the wire, and the control messages (distribution,
//! request) that travel inside pairwise sessions.

use std::fmt;

use samizdat_proto::wire as pb;
use zeroize::Zeroizing;

use super::GroupId;
use crate::{
    DecodeError,
    address::Address,
    heal::{MessageId, has_repeats, id_from_slice},
    kdf,
    keys::{IdentityKey, SIGNATURE_LEN, Secret32, fixed},
    limits::{MAX_KEPT_PLAINTEXT_LEN, MAX_RESEND_IDS, MAX_RESET_IDS},
    padding::MIN_BUCKET,
    ratchet::message_key::TAG_LEN,
    wire,
};

/// Length of a group message's salt.
pub const SALT_LEN: usize = kdf::MESSAGE_KEY_SALT_LEN;

/// A group message: one ciphertext for every member, signed by the sender's
/// chain (PROTOCOL.md 18.4).
#[derive(Clone, PartialEq, Eq)]
pub struct GroupMessage {
    pub(crate) group_id: GroupId,
    pub(crate) chain_id: u32,
    pub(crate) iteration: u32,
    pub(crate) salt: [u8; SALT_LEN],
    pub(crate) body: Vec<u8>,
    pub(crate) signature: [u8; SIGNATURE_LEN],
}

impl GroupMessage {
    /// The group id.
    pub fn group_id(&self) -> &[u8] {
        self.group_id.as_bytes()
    }

    /// The id of the sender's chain.
    pub fn chain_id(&self) -> u32 {
        self.chain_id
    }

    /// The message's iteration on its chain.
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// Encodes the message: version byte, then the envelope.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode_envelope(pb::envelope::Body::Group(pb::GroupMessage {
            group_id: self.group_id.as_bytes().to_vec(),
            chain_id: self.chain_id,
            iteration: self.iteration,
            salt: self.salt.to_vec(),
            body: self.body.clone(),
            signature: self.signature.to_vec(),
        }))
    }

    /// Decodes a group message: size limit, version, kind, canonical
    /// encoding, then every field's length (PROTOCOL.md 18.4). Nothing is
    /// verified here: the signature is checked against the sender's chain.
    ///
    /// # Errors
    /// A [`DecodeError`] naming what is wrong; [`DecodeError::UnknownKind`]
    /// for a one-to-one message.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        match wire::decode_envelope(bytes)? {
            pb::envelope::Body::Group(message) => Self::from_proto(message),
            _ => Err(DecodeError::UnknownKind),
        }
    }

    pub(crate) fn from_proto(message: pb::GroupMessage) -> Result<Self, DecodeError> {
        let group_id = GroupId::from_wire(&message.group_id, "group.group_id")?;
        let salt = fixed::<SALT_LEN>(&message.salt, "group.salt")?;
        let signature = fixed::<SIGNATURE_LEN>(&message.signature, "group.signature")?;
        let min = MIN_BUCKET.saturating_add(TAG_LEN);
        if message.body.len() < min {
            return Err(DecodeError::InvalidLength { field: "group.body", expected: min, actual: message.body.len() });
        }
        Ok(Self {
            group_id,
            chain_id: message.chain_id,
            iteration: message.iteration,
            salt,
            body: message.body,
            signature,
        })
    }

    /// The associated data of this message sent by `sender`.
    pub(crate) fn associated_data(&self, sender: &Address) -> Vec<u8> {
        associated_data(&self.group_id, sender, self.chain_id, self.iteration, &self.salt)
    }

    /// What the signature covers: the associated data, then the body.
    pub(crate) fn signed_bytes(&self, sender: &Address) -> Vec<u8> {
        [self.associated_data(sender).as_slice(), &self.body].concat()
    }
}

impl fmt::Debug for GroupMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupMessage")
            .field("chain_id", &self.chain_id)
            .field("iteration", &self.iteration)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// The associated data of a group message (PROTOCOL.md 18.4):
///
/// ```text
/// GROUP_MESSAGE_LABEL || u8(len(group id)) || group id
///   || u32(len(user id)) || user id || u32(device id)
///   || u32(chain id) || u32(iteration) || salt (24)
/// ```
pub(crate) fn associated_data(
    group_id: &GroupId,
    sender: &Address,
    chain_id: u32,
    iteration: u32,
    salt: &[u8; SALT_LEN],
) -> Vec<u8> {
    let group = group_id.as_bytes();
    let user = sender.user_id().as_bytes();
    // The label, the group id's length byte, three u32s and the salt, then
    // the two variable parts.
    const FIXED_LEN: usize = kdf::GROUP_MESSAGE_LABEL.len() + 1 + 16 + SALT_LEN;
    let mut out = Vec::with_capacity(FIXED_LEN.saturating_add(group.len()).saturating_add(user.len()));
    out.extend_from_slice(kdf::GROUP_MESSAGE_LABEL);
    // A group id is 1 to 64 bytes: its length fits a byte.
    out.push(u8::try_from(group.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(group);
    out.extend_from_slice(&u32::try_from(user.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(user);
    out.extend_from_slice(&sender.device_id().to_be_bytes());
    out.extend_from_slice(&chain_id.to_be_bytes());
    out.extend_from_slice(&iteration.to_be_bytes());
    out.extend_from_slice(salt);
    out
}

/// A sender's chain at one iteration: what a member needs to read the
/// sender's messages from that iteration on.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Distribution {
    pub(crate) group_id: GroupId,
    pub(crate) chain_id: u32,
    pub(crate) iteration: u32,
    pub(crate) chain_key: Secret32,
    pub(crate) signing_key: IdentityKey,
    /// The chain's generation among its sender's chains in the group (0:
    /// from an earlier release), PROTOCOL.md 18.6.
    pub(crate) generation: u64,
}

/// A member's request for a sender's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) group_id: GroupId,
    pub(crate) chain_id: u32,
    pub(crate) iteration: u32,
    /// The lowest generation of a new chain of the sender the member takes
    /// in (0: any), PROTOCOL.md 18.7.
    pub(crate) min_generation: u64,
}

/// The content of a pairwise control message (PROTOCOL.md 18.6).
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Control {
    Distribution(Distribution),
    Request(Request),
    /// The first message of a session started to heal: the ids of the
    /// messages its sender could not read (PROTOCOL.md 20.5).
    Reset(Vec<MessageId>),
    /// A message of the outbox sent again (PROTOCOL.md 20.6).
    Resend {
        id: MessageId,
        also: Vec<MessageId>,
        plaintext: Zeroizing<Vec<u8>>,
    },
}

impl Control {
    /// The canonical encoding of the `Control` protobuf (no version byte:
    /// it travels only encrypted, as control content). Wiped on drop.
    pub(crate) fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        use prost::Message as _;
        let body = match self {
            Self::Distribution(d) => pb::control::Body::Distribution(pb::SenderKeyDistribution {
                group_id: d.group_id.as_bytes().to_vec(),
                chain_id: d.chain_id,
                iteration: d.iteration,
                chain_key: d.chain_key.as_bytes().to_vec(),
                signing_key: d.signing_key.as_bytes().to_vec(),
                generation: d.generation,
            }),
            Self::Request(r) => pb::control::Body::Request(pb::SenderKeyRequest {
                group_id: r.group_id.as_bytes().to_vec(),
                chain_id: r.chain_id,
                iteration: r.iteration,
                min_generation: r.min_generation,
            }),
            Self::Reset(ids) => {
                pb::control::Body::Reset(pb::Reset { unreadable: ids.iter().map(|id| id.to_vec()).collect() })
            }
            Self::Resend { id, also, plaintext } => pb::control::Body::Resend(pb::Resend {
                id: id.to_vec(),
                plaintext: plaintext.to_vec(),
                also: also.iter().map(|id| id.to_vec()).collect(),
            }),
        };
        let control = Zeroizing::new(pb::Control { body: Some(body) });
        let mut out = Zeroizing::new(Vec::with_capacity(control.encoded_len()));
        // Encoding into a Vec cannot run out of space.
        let _ = control.encode(&mut *out);
        out
    }

    /// Parses control content: canonical, every field checked; the signing
    /// key must be a full-order Ed25519 key.
    ///
    /// # Errors
    /// A [`DecodeError`]; [`DecodeError::UnknownKind`] for a control body
    /// this release does not know.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        // One well-formed field of a number this release does not know: a
        // control kind of a later release (PROTOCOL.md 18.6).
        if wire::is_unknown_field(bytes, 4) {
            return Err(DecodeError::UnknownKind);
        }
        let control = crate::codec::decode_secret::<pb::Control>(bytes)?;
        match &control.body {
            Some(pb::control::Body::Distribution(d)) => Ok(Self::Distribution(Distribution {
                group_id: GroupId::from_wire(&d.group_id, "distribution.group_id")?,
                chain_id: d.chain_id,
                iteration: d.iteration,
                chain_key: Secret32::from_slice(&d.chain_key, "distribution.chain_key")?,
                signing_key: IdentityKey::from_slice(&d.signing_key)
                    .map_err(|_| DecodeError::InvalidValue("distribution.signing_key"))?,
                generation: d.generation,
            })),
            Some(pb::control::Body::Request(r)) => Ok(Self::Request(Request {
                group_id: GroupId::from_wire(&r.group_id, "request.group_id")?,
                chain_id: r.chain_id,
                iteration: r.iteration,
                min_generation: r.min_generation,
            })),
            Some(pb::control::Body::Reset(r)) => {
                if r.unreadable.len() > MAX_RESET_IDS {
                    return Err(DecodeError::InvalidValue("reset.unreadable"));
                }
                let ids: Vec<MessageId> =
                    r.unreadable.iter().map(|id| id_from_slice(id, "reset.unreadable")).collect::<Result<_, _>>()?;
                if has_repeats(&ids) {
                    return Err(DecodeError::InvalidValue("reset.unreadable"));
                }
                Ok(Self::Reset(ids))
            }
            Some(pb::control::Body::Resend(r)) => {
                if r.plaintext.len() > MAX_KEPT_PLAINTEXT_LEN {
                    return Err(DecodeError::InvalidValue("resend.plaintext"));
                }
                let id = id_from_slice(&r.id, "resend.id")?;
                if r.also.len() > MAX_RESEND_IDS {
                    return Err(DecodeError::InvalidValue("resend.also"));
                }
                let also: Vec<MessageId> =
                    r.also.iter().map(|other| id_from_slice(other, "resend.also")).collect::<Result<_, _>>()?;
                let all: Vec<&MessageId> = std::iter::once(&id).chain(also.iter()).collect();
                if has_repeats(&all) {
                    return Err(DecodeError::InvalidValue("resend.also"));
                }
                Ok(Self::Resend { id, also, plaintext: Zeroizing::new(r.plaintext.clone()) })
            }
            // The sent sync (PROTOCOL.md 23.7), the handover and its
            // acknowledgment (23.9) are read by the device API before this
            // parser (`user::sync`, `user::handover`); here, as C0 says,
            // kinds this parser does not know.
            Some(
                pb::control::Body::SentSync(_) | pb::control::Body::Handover(_) | pb::control::Body::HandoverAck(_),
            )
            | None => Err(DecodeError::UnknownKind),
        }
    }
}

impl fmt::Debug for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Distribution")
            .field("chain_id", &self.chain_id)
            .field("iteration", &self.iteration)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Distribution(d) => d.fmt(f),
            Self::Request(r) => r.fmt(f),
            Self::Reset(ids) => f.debug_struct("Reset").field("unreadable", &ids.len()).finish(),
            Self::Resend { plaintext, .. } => {
                f.debug_struct("Resend").field("plaintext_len", &plaintext.len()).finish_non_exhaustive()
            }
        }
    }
}
