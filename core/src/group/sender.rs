//! Our sending chain in one group.

use std::fmt;

use ed25519_dalek::{VerifyingKey, hazmat::ExpandedSecretKey};
use rand_core::CryptoRng;
use samizdat_proto::storage;
use sha2::{Digest as _, Sha512};
use zeroize::Zeroizing;

use super::{Distribution, GroupId, GroupMessage, SALT_LEN, seal};
use crate::{
    DecodeError, EncryptError,
    address::Address,
    keys::{IdentityKey, IdentityKeyPair, Secret32, fixed},
    limits::GROUP_RECOVERY_WINDOW,
    ratchet::chain::ChainKey,
};

/// Our chain in one group: its id, the chain key at the next iteration, the
/// signing key, and a copy of the chain key at most
/// [`GROUP_RECOVERY_WINDOW`] iterations behind (to answer a member that lost
/// the distribution, PROTOCOL.md 18.7).
pub(crate) struct OwnChain {
    chain_id: u32,
    /// The chain's generation among our chains in the group (PROTOCOL.md
    /// 18.6): stored in the chain's row, next to the chain.
    generation: u64,
    chain: ChainKey,
    signing: ChainSigner,
    recovery: ChainKey,
}

/// The chain's Ed25519 signing key, held expanded next to its public key.
/// Its row stores the public key, so loading the chain costs a SHA-512 of
/// the seed and a decompression, not the base-point multiplication that
/// deriving the public key takes (15.7 µs per load, benches/NOTES.md). The
/// signature is the RFC 8032 one `SigningKey::sign` makes (a unit test
/// compares them); the stored public key is authenticated by the row's seal.
struct ChainSigner {
    seed: Zeroizing<[u8; 32]>,
    /// Zeroized on drop by the crate.
    expanded: ExpandedSecretKey,
    verifying: VerifyingKey,
    public: IdentityKey,
}

impl ChainSigner {
    fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_pair(&IdentityKeyPair::generate(rng))
    }

    /// From a key pair (a new chain, or a row that holds no public key).
    fn from_pair(pair: &IdentityKeyPair) -> Self {
        let seed = pair.to_seed();
        Self {
            expanded: ExpandedSecretKey::from(&*seed),
            seed,
            verifying: pair.verifying_key(),
            public: pair.public_key(),
        }
    }

    /// From a seed and its public key (as stored: authenticated, trusted).
    fn new(seed: Zeroizing<[u8; 32]>, public: &[u8; 32]) -> Result<Self, DecodeError> {
        let verifying =
            VerifyingKey::from_bytes(public).map_err(|_| DecodeError::InvalidValue("own.signing_public"))?;
        Ok(Self {
            expanded: ExpandedSecretKey::from(&*seed),
            seed,
            verifying,
            public: IdentityKey::from_stored_slice(public, "own.signing_public")?,
        })
    }

    /// Signs `ad || body` (Ed25519), without concatenating them. The
    /// closure never fails, so neither does signing; were it to, no message
    /// is made (the chain cannot sign: a new one is needed).
    fn sign(&self, ad: &[u8], body: &[u8]) -> Result<[u8; 64], EncryptError> {
        ed25519_dalek::hazmat::raw_sign_byupdate::<Sha512, _>(
            &self.expanded,
            |hasher| {
                hasher.update(ad);
                hasher.update(body);
                Ok(())
            },
            &self.verifying,
        )
        .map(|signature| signature.to_bytes())
        .map_err(|_| EncryptError::ChainExhausted)
    }
}

impl OwnChain {
    /// A new chain of generation `generation`: random id, chain key and
    /// signing key, at iteration 0.
    pub(crate) fn generate<R: CryptoRng + ?Sized>(rng: &mut R, generation: u64) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut_slice());
        let chain = ChainKey::new(Secret32::from_zeroizing(&key), 0);
        let signing = ChainSigner::generate(rng);
        Self { chain_id: rng.next_u32(), generation, recovery: chain.clone(), chain, signing }
    }

    pub(crate) fn chain_id(&self) -> u32 {
        self.chain_id
    }

    /// The iteration of the next message.
    pub(crate) fn iteration(&self) -> u32 {
        self.chain.index()
    }

    /// Encrypts `plaintext` as the next message of the chain, from `sender`
    /// (this device), and advances the chain. Changes nothing on error.
    ///
    /// # Errors
    /// [`EncryptError::MessageTooLarge`], [`EncryptError::ChainExhausted`]
    /// (after 2^32 - 1 messages: a new chain is needed).
    pub(crate) fn encrypt<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        group_id: &GroupId,
        sender: &Address,
        plaintext: &[u8],
    ) -> Result<GroupMessage, EncryptError> {
        let next = self.chain.next().ok_or(EncryptError::ChainExhausted)?;
        let seed = self.chain.message_key();
        let seed = seed.seed().ok_or(EncryptError::ChainExhausted)?;
        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        let iteration = self.chain.index();
        let ad = super::message::associated_data(group_id, sender, self.chain_id, iteration, &salt);
        let body = seal(seed, &salt, &ad, plaintext)?;
        let mut message = GroupMessage {
            group_id: group_id.clone(),
            chain_id: self.chain_id,
            iteration,
            salt,
            body,
            signature: [0; 64],
        };
        message.signature = self.signing.sign(&ad, &message.body)?;
        self.chain = next;
        // The recovery copy trails by at most the window.
        while self.chain.index().saturating_sub(self.recovery.index()) > GROUP_RECOVERY_WINDOW {
            match self.recovery.next() {
                Some(next) => self.recovery = next,
                None => break,
            }
        }
        Ok(message)
    }

    /// The chain as a member needs it from iteration `from` on: at `from` if
    /// the recovery copy reaches back that far, else at the recovery copy's
    /// iteration; never past the current iteration.
    pub(crate) fn distribution(&self, group_id: &GroupId, from: u32) -> Distribution {
        // At most GROUP_RECOVERY_WINDOW steps from the recovery copy.
        let from = from.clamp(self.recovery.index(), self.chain.index());
        let mut chain = self.recovery.clone();
        while chain.index() < from {
            match chain.next() {
                Some(next) => chain = next,
                None => break,
            }
        }
        Distribution {
            group_id: group_id.clone(),
            chain_id: self.chain_id,
            iteration: chain.index(),
            chain_key: chain.as_secret().clone(),
            signing_key: self.signing.public,
            generation: self.generation,
        }
    }

    pub(crate) fn to_record(&self) -> storage::OwnChain {
        storage::OwnChain {
            chain_id: self.chain_id,
            iteration: self.chain.index(),
            chain_key: self.chain.as_secret().as_bytes().to_vec(),
            signing_seed: self.signing.seed.to_vec(),
            signing_public: self.signing.public.as_bytes().to_vec(),
            recovery_key: self.recovery.as_secret().as_bytes().to_vec(),
            recovery_iteration: self.recovery.index(),
        }
    }

    /// Loads a stored chain of generation `generation` (its row's), checking
    /// every field and the window.
    pub(crate) fn from_record(record: &storage::OwnChain, generation: u64) -> Result<Self, DecodeError> {
        let seed = Zeroizing::new(fixed::<32>(&record.signing_seed, "own.signing_seed")?);
        if record.recovery_iteration > record.iteration
            || record.iteration.saturating_sub(record.recovery_iteration) > GROUP_RECOVERY_WINDOW
        {
            return Err(DecodeError::InvalidValue("own.recovery_iteration"));
        }
        // Rows of earlier releases hold no public key: derived once.
        let signing = if record.signing_public.is_empty() {
            ChainSigner::from_pair(&IdentityKeyPair::from_seed(&seed))
        } else {
            ChainSigner::new(seed, &fixed::<32>(&record.signing_public, "own.signing_public")?)?
        };
        Ok(Self {
            chain_id: record.chain_id,
            generation,
            chain: ChainKey::new(Secret32::from_slice(&record.chain_key, "own.chain_key")?, record.iteration),
            signing,
            recovery: ChainKey::new(
                Secret32::from_slice(&record.recovery_key, "own.recovery_key")?,
                record.recovery_iteration,
            ),
        })
    }
}

impl fmt::Debug for OwnChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnChain")
            .field("chain_id", &self.chain_id)
            .field("generation", &self.generation)
            .field("iteration", &self.chain.index())
            .finish_non_exhaustive()
    }
}
