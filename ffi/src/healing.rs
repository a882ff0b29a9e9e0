//! Healing (PROTOCOL.md 20): the sealed outbox, message ids and the reset
//! of a session that went out of step, as calls of [`Device`]. Translation
//! only, as in the rest of the crate.
//!
//! - [`Device::encrypt_kept`] encrypts as [`Device::encrypt`] does and keeps
//!   the plaintext, sealed, in the outbox for that peer until
//!   [`Device::acknowledge`] (or until the [`HealPolicy`] drops it).
//! - A message is named by its [`message_id`] (16 bytes), which both sides
//!   compute from its wire bytes; [`crate::PendingMessage::message_id`] gives
//!   it on the receiving side, for a delivery receipt.
//! - A decryption that fails with [`SamizdatError::OutOfStep`] (recovery
//!   `heal`): fetch the peer's bundle and call [`Device::heal`] with the
//!   messages that could not be read. Send the reset it returns
//!   ([`HealResult::Sent`]); the peer's [`Device::commit`] of it returns the
//!   messages its outbox still holds, sent again, which arrive as direct
//!   messages under the id they were first sent with, at most once each.
//!   While [`Device::awaiting_resends`] is not zero, heal again later: a
//!   reset or a resend may have been lost.

use samizdat::{
    device,
    heal::{MESSAGE_ID_LEN, MessageId},
};

use crate::{Address, Device, Outgoing, SamizdatError, Seconds, Timestamp, error::Details};

/// How a device heals ([`Device::set_heal_policy`]). Times are in seconds,
/// on the clock of the `now` the app passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct HealPolicy {
    /// The least time between two resets sent to one peer (default: one
    /// hour): a forged message can make the app ask for a reset, but not for
    /// more than one per interval. Zero turns the limit off (for tests).
    pub reset_interval: Seconds,
    /// How long the outbox keeps a plaintext that no acknowledgement removed
    /// (default: 30 days).
    pub outbox_max_age: Seconds,
    /// The most plaintexts the outbox keeps per peer, the oldest making room
    /// (default and maximum: 256).
    pub outbox_max_messages: i32,
    /// Whether a reset from the peer under another identity than the one
    /// trusted when a message was sent (a reinstall whose new key the app
    /// trusted) gets that message again. Default `false`: a message goes
    /// only to the identity it was encrypted for, so that a key trusted
    /// later (perhaps an attacker's, accepted in error) gets none of what
    /// was sent before.
    pub resend_to_new_identity: bool,
}

/// What [`Device::heal`] did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum HealResult {
    /// A new session was started: send `reset`, its first message, to the
    /// peer. Its commit of it sends again what its outbox still holds of the
    /// messages named.
    Sent {
        /// The reset, for the peer.
        reset: Outgoing,
    },
    /// A reset went to this peer less than the policy's `reset_interval`
    /// ago: nothing was done. Heal again at `retry_at` if the session is
    /// still out of step then.
    TooSoon {
        /// The first time a reset may be sent again.
        retry_at: Timestamp,
    },
}

#[uniffi::export]
impl Device {
    /// Encrypts for `peer` as [`Device::encrypt`] does, and keeps the
    /// plaintext, sealed, in the outbox for `peer` until
    /// [`Self::acknowledge`], so that a reset from the peer brings it again
    /// (committed before it returns). `now` dates the entry for the policy's
    /// `outbox_max_age`.
    pub fn encrypt_kept(&self, peer: Address, plaintext: Vec<u8>, now: Timestamp) -> Result<Vec<u8>, SamizdatError> {
        Ok(self.inner.encrypt_kept(&peer.to_core()?, &plaintext, crate::at(now)?)?)
    }

    /// Removes from the outbox for `peer` the messages of these ids (16
    /// bytes each: [`message_id`] of what was sent, as the peer's delivery
    /// receipt gives it); returns how many it held. Ids it does not hold
    /// are ignored.
    pub fn acknowledge(&self, peer: Address, ids: Vec<Vec<u8>>) -> Result<i32, SamizdatError> {
        let ids = ids.iter().enumerate().map(|(i, id)| to_message_id(i, id)).collect::<Result<Vec<_>, _>>()?;
        Ok(crate::to_i32(self.inner.acknowledge(&peer.to_core()?, &ids)?))
    }

    /// How many plaintexts the outbox holds for `peer`.
    pub fn outbox_len(&self, peer: Address) -> Result<i32, SamizdatError> {
        Ok(crate::to_i32(self.inner.outbox_len(&peer.to_core()?)?))
    }

    /// Deletes from the outbox, for every peer, the plaintexts past the
    /// policy's `outbox_max_age` at `now`; returns how many. Call it when
    /// the app starts or goes to the background.
    pub fn expire_outbox(&self, now: Timestamp) -> Result<i32, SamizdatError> {
        Ok(crate::to_i32(self.inner.expire_outbox(crate::at(now)?)?))
    }

    /// Heals the session with the peer whose fresh `bundle` this is, after a
    /// decryption from it failed with [`SamizdatError::OutOfStep`]: starts a
    /// new session and returns its first message, a reset naming the
    /// messages in `unreadable` (their wire bytes as received) and those
    /// earlier resets named that no resend brought yet
    /// ([`Self::awaiting_resends`]); at most the latest 64 distinct ones,
    /// and none that 3 answered resets named already. At most one reset per
    /// peer per `reset_interval`: sooner, [`HealResult::TooSoon`]. The
    /// session we had is kept, so that the peer's messages in flight on it
    /// still decrypt.
    pub fn heal(&self, bundle: Vec<u8>, unreadable: Vec<Vec<u8>>, now: Timestamp) -> Result<HealResult, SamizdatError> {
        match self.inner.heal(&bundle, &unreadable, crate::at(now)?)? {
            device::Heal::Sent(reset) => Ok(HealResult::Sent { reset: reset.into() }),
            device::Heal::TooSoon { retry_at } => Ok(HealResult::TooSoon { retry_at: Timestamp::of(retry_at) }),
            // The core this crate is built with has no other outcome; a
            // later one must be given a variant here.
            other => Err(SamizdatError::from_core(
                samizdat::ErrorKind::StoreFailure,
                format!("heal did what this binding does not know ({other:?})"),
                Details::None,
            )),
        }
    }

    /// How many messages from `peer` this device still waits for since its
    /// resets named them (no resend brought them, and they were not read as
    /// first sent), counting those a next reset would name again. While it
    /// is not zero, heal again at the `retry_at` of [`HealResult::TooSoon`]
    /// (or after the policy's `reset_interval`): a reset or a resend may
    /// have been lost on the way.
    pub fn awaiting_resends(&self, peer: Address) -> Result<i32, SamizdatError> {
        Ok(crate::to_i32(self.inner.awaiting_resends(&peer.to_core()?)?))
    }

    /// Sets how this handle heals (every handle of a store keeps its own
    /// policy: give each the same). Fails with
    /// [`SamizdatError::InvalidArgument`] if `outbox_max_messages` is above
    /// 256.
    pub fn set_heal_policy(&self, policy: HealPolicy) -> Result<(), SamizdatError> {
        Ok(self.inner.set_heal_policy(device::HealPolicy {
            reset_interval: policy.reset_interval.to_duration("reset_interval")?,
            outbox_max_age: policy.outbox_max_age.to_duration("outbox_max_age")?,
            outbox_max_messages: crate::count_arg("outbox_max_messages", policy.outbox_max_messages)?,
            resend_to_new_identity: policy.resend_to_new_identity,
        })?)
    }

    /// This handle's healing policy.
    pub fn heal_policy(&self) -> HealPolicy {
        let policy = self.inner.heal_policy();
        HealPolicy {
            reset_interval: Seconds::of(policy.reset_interval),
            outbox_max_age: Seconds::of(policy.outbox_max_age),
            outbox_max_messages: crate::to_i32(policy.outbox_max_messages),
            resend_to_new_identity: policy.resend_to_new_identity,
        }
    }
}

/// The id of the message whose wire bytes are `wire` (16 bytes): the same
/// on both sides, what [`crate::PendingMessage::message_id`] gives the
/// receiver and [`Device::acknowledge`] takes.
#[uniffi::export]
pub fn message_id(wire: Vec<u8>) -> Vec<u8> {
    samizdat::heal::message_id(&wire).to_vec()
}

/// The `i`-th id given to [`Device::acknowledge`], checked.
fn to_message_id(i: usize, id: &[u8]) -> Result<MessageId, SamizdatError> {
    MessageId::try_from(id).map_err(|_| {
        SamizdatError::invalid_argument(format!("message id {i} has {} bytes, expected {MESSAGE_ID_LEN}", id.len()))
    })
}
