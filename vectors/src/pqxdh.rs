//! The PQXDH handshake, down to every agreement, and the first messages.

use chacha20::ChaCha20Rng;
use hkdf::Hkdf;
use samizdat::{
    address::Address,
    hazmat::{self, FixedBytes, TranscriptInput},
    keys::IdentityKeyPair,
    prekeys::{PreKeyBundle, PreKeySet},
    session::SessionRecord,
    wire::Message,
};
use samizdat_proto::{Message as _, wire as pb};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::time::UNIX_EPOCH;

use crate::{
    bundles::{PqOffer, PreKeyRandomness, device},
    format::{Meta, VectorSet},
    util::{R, VErr, agree, array, bytes, chacha20poly1305_seal, check_drawn, err, h, random_hex, sha256},
};

/// `pqxdh.json`.
pub(crate) struct Pqxdh;

/// Label of the PQXDH key derivation (`PROTOCOL.md`, section 3).
const PQXDH_LABEL: &[u8] = b"samizdat/v1/pqxdh";

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct PqxdhCase {
    name: String,
    // Inputs.
    alice_identity_seed: String,
    alice_user_id: String,
    alice_device_id: u32,
    bob_identity_seed: String,
    bob_user_id: String,
    bob_device_id: u32,
    bob_prekey_randomness: PreKeyRandomness,
    offer_one_time_prekey: bool,
    pq_prekey: PqOffer,
    alice_base_key_secret: String,
    alice_mlkem_m: String,
    alice_ratchet_secret: String,
    alice_header_nonce: String,
    plaintext: String,
    bob_ratchet_secret: String,
    bob_header_nonce: String,
    reply_plaintext: String,
    alice_reply_ratchet_secret: String,
    // Outputs: the bundle and the keys.
    bundle: String,
    ik_a: String,
    ik_a_x25519_secret: String,
    ik_a_x25519: String,
    ik_b: String,
    ik_b_x25519_secret: String,
    ik_b_x25519: String,
    spk_b_id: u32,
    spk_b: String,
    opk_b_id: Option<u32>,
    opk_b: Option<String>,
    pqpk_b_id: u32,
    pqpk_b_last_resort: bool,
    pqpk_b: String,
    ek_a: String,
    // The agreements.
    dh1: String,
    dh2: String,
    dh3: String,
    dh4: Option<String>,
    pq_ciphertext: String,
    pq_shared_secret: String,
    transcript: String,
    transcript_sha256: String,
    ikm: String,
    info: String,
    root_key: String,
    hka: String,
    nhkb: String,
    associated_data: String,
    // The initiator's ratchet and its first message.
    alice_ratchet_key: String,
    alice_init_dh: String,
    alice_root_key_1: String,
    alice_chain_key_0: String,
    alice_next_header_key: String,
    message_key_seed: String,
    message_key: String,
    message_nonce: String,
    header: String,
    encrypted_header: String,
    body: String,
    first_message: String,
    // The responder.
    bob_decrypted: String,
    bob_consumed_one_time_prekey: Option<u32>,
    bob_consumed_pq_prekey: Option<u32>,
    bob_remembers_base_key: bool,
    bob_ratchet_key: String,
    reply: String,
    alice_decrypted_reply: String,
}

impl VectorSet for Pqxdh {
    type Case = PqxdhCase;
    const META: Meta = Meta {
        file: "pqxdh.json",
        section: "8 The PQXDH handshake (8.1 to 8.8); 4.3 Initialisation; 4.5 Encryption; 6.11 When prekeys are \
            consumed; 9.5 Decrypting (phase 1)",
        description: "Alice (initiator) starts a session from Bob's bundle, made as in bundles.json from \
            bob_identity_seed, bob_user_id, bob_device_id, bob_prekey_randomness, offer_one_time_prekey and \
            pq_prekey (the one-time keys a case does not offer are consumed before the bundle is made), and sends one \
            message; Bob decrypts it and replies; Alice decrypts the reply. Alice's generator draws, in order: the \
            base key secret EK_A (32 bytes), the ML-KEM encapsulation randomness m (32), her first ratchet secret \
            (32); then the header nonce of her message (24). Bob's decryption draws his new ratchet secret (32), his \
            reply its header nonce (24), Alice's decryption of the reply her next ratchet secret (32). IK_A and IK_B \
            are Ed25519 keys; ik_*_x25519 their X25519 forms (identity.json). DH1 = DH(IK_A, SPK_B), DH2 = DH(EK_A, \
            IK_B), DH3 = DH(EK_A, SPK_B), DH4 = DH(EK_A, OPK_B) (null without a one-time prekey); (pq_ciphertext, \
            pq_shared_secret) = ML-KEM-1024.Encaps(PQPK_B, m). The transcript is IK_A || IK_B || u32be(spk id) || \
            SPK_B || (0x00 | 0x01 || u32be(opk id) || OPK_B) || kind (0x01 one-time, 0x02 last resort) || \
            u32be(pq id) || PQPK_B || EK_A || CT || addr(A) || addr(B), with addr = u32be(len(user id)) || user id \
            || u32be(device id) (A's address is alice_user_id and alice_device_id, B's is Bob's bundle's). ikm = 0xFF*32 || DH1 || DH2 || DH3 [|| DH4] || SS; \
            info = \"samizdat/v1/pqxdh\" || SHA-256(transcript); root_key || hka || nhkb = HKDF-SHA256(salt = 32 zero \
            bytes, ikm, info, 96). associated_data = \"samizdat/v1/session-ad\" || IK_A || IK_B. Then the ratchet \
            (4.3.1): alice_init_dh = DH(alice_ratchet_secret, SPK_B), KDF_RK_HE(root_key, alice_init_dh) = \
            alice_root_key_1 || alice_chain_key_0 || alice_next_header_key; message 0's seed, key and nonce; its \
            header sealed under hka; body = ChaCha20-Poly1305(message_key, message_nonce, aad = associated_data || \
            encrypted_header, PAD(plaintext)); first_message is the encoded PreKeyMessage. bob_consumed_* are the \
            one-time prekeys Bob deletes when he commits the new session (a last-resort key is never consumed); \
            bob_remembers_base_key says whether he must remember EK_A instead (no one-time X25519 prekey was used).",
        seed: 11,
        inputs: &[
            "name",
            "alice_identity_seed",
            "alice_user_id",
            "alice_device_id",
            "bob_identity_seed",
            "bob_user_id",
            "bob_device_id",
            "bob_prekey_randomness",
            "offer_one_time_prekey",
            "pq_prekey",
            "alice_base_key_secret",
            "alice_mlkem_m",
            "alice_ratchet_secret",
            "alice_header_nonce",
            "plaintext",
            "bob_ratchet_secret",
            "bob_header_nonce",
            "reply_plaintext",
            "alice_reply_ratchet_secret",
        ],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<PqxdhCase>, VErr> {
        let alice = random_hex(rng, 32);
        let bob = random_hex(rng, 32);
        let mut case = |name: &str, opk: bool, pq: PqOffer, plaintext: &[u8]| PqxdhCase {
            name: name.to_owned(),
            alice_identity_seed: alice.clone(),
            alice_user_id: "alice".to_owned(),
            alice_device_id: 1,
            bob_identity_seed: bob.clone(),
            bob_user_id: "bob".to_owned(),
            bob_device_id: 1,
            bob_prekey_randomness: PreKeyRandomness::draw(rng),
            offer_one_time_prekey: opk,
            pq_prekey: pq,
            alice_base_key_secret: random_hex(rng, 32),
            alice_mlkem_m: random_hex(rng, 32),
            alice_ratchet_secret: random_hex(rng, 32),
            alice_header_nonce: random_hex(rng, 24),
            plaintext: h(plaintext),
            bob_ratchet_secret: random_hex(rng, 32),
            bob_header_nonce: random_hex(rng, 24),
            reply_plaintext: h(b"hi Alice"),
            alice_reply_ratchet_secret: random_hex(rng, 32),
            ..PqxdhCase::default()
        };
        Ok(vec![
            case("one_time_prekey_and_pq_one_time", true, PqOffer::OneTime, b"hello Bob"),
            case("no_one_time_prekey_pq_one_time", false, PqOffer::OneTime, b"hello Bob, no one-time prekey"),
            case("one_time_prekey_pq_last_resort", true, PqOffer::LastResort, b"hello Bob, last resort"),
            case("no_one_time_prekey_pq_last_resort", false, PqOffer::LastResort, b""),
        ])
    }

    fn compute(case: &PqxdhCase) -> R<PqxdhCase> {
        let alice_seed = array::<32>("alice_identity_seed", &case.alice_identity_seed)?;
        let bob_seed = array::<32>("bob_identity_seed", &case.bob_identity_seed)?;
        let address = Address::new(case.bob_user_id.clone(), case.bob_device_id)
            .map_err(|e| err("bob_user_id", e.to_string()))?;
        let alice_address = Address::new(case.alice_user_id.clone(), case.alice_device_id)
            .map_err(|e| err("alice_user_id", e.to_string()))?;
        let bob = device(
            "bob_prekey_randomness",
            &bob_seed,
            &address,
            &case.bob_prekey_randomness,
            case.offer_one_time_prekey,
            case.pq_prekey,
        )?;
        let bundle_bytes = bob.bundle.to_bytes();
        let bundle = PreKeyBundle::from_bytes(&bundle_bytes).map_err(|e| err("bundle", e.to_string()))?;
        let alice = IdentityKeyPair::from_seed(&alice_seed);
        let plaintext = bytes("plaintext", &case.plaintext)?;
        let reply_plaintext = bytes("reply_plaintext", &case.reply_plaintext)?;
        let ek_secret = array::<32>("alice_base_key_secret", &case.alice_base_key_secret)?;
        let m = array::<32>("alice_mlkem_m", &case.alice_mlkem_m)?;
        let ratchet_secret = array::<32>("alice_ratchet_secret", &case.alice_ratchet_secret)?;
        let nonce = array::<24>("alice_header_nonce", &case.alice_header_nonce)?;

        // Through the public API.
        let mut alice_record = SessionRecord::new();
        let mut random = ek_secret.to_vec();
        random.extend_from_slice(&m);
        random.extend_from_slice(&ratchet_secret);
        let mut rng = FixedBytes::new(&random);
        alice_record.initiate(&mut rng, &alice, &alice_address, &bundle).map_err(|e| err("bundle", e.to_string()))?;
        check_drawn("alice_ratchet_secret", &rng, 96)?;
        let mut rng = FixedBytes::new(&nonce);
        let first = alice_record.encrypt(&mut rng, &plaintext).map_err(|e| err("first_message", e.to_string()))?;
        check_drawn("alice_header_nonce", &rng, 24)?;

        // The same, step by step.
        let bundle_pb = pb::PreKeyBundle::decode(bundle_bytes.get(1..).unwrap_or_default())
            .map_err(|e| err("bundle", e.to_string()))?;
        let spk = bundle_pb.signed_prekey.clone().unwrap_or_default();
        let pq = bundle_pb.pq_prekey.clone().unwrap_or_default();
        let spk_b = array::<32>("spk_b", &h(&spk.public_key))?;
        let (ik_a, ik_a_secret, ik_a_x) = hazmat::identity_forms(&alice_seed);
        let (ik_b, ik_b_secret, ik_b_x) = hazmat::identity_forms(&bob_seed);
        let ek_a = hazmat::x25519_public(&ek_secret);
        let dh = |field: &str, s: &[u8; 32], p: &[u8; 32]| hazmat::x25519(s, p).ok_or_else(|| err(field, "all zero"));
        let dh1 = dh("dh1", &ik_a_secret, &spk_b)?;
        let dh2 = dh("dh2", &ek_secret, &ik_b_x)?;
        let dh3 = dh("dh3", &ek_secret, &spk_b)?;
        let opk = match &bundle_pb.one_time_prekey {
            Some(k) => Some((k.id, array::<32>("opk_b", &h(&k.public_key))?)),
            None => None,
        };
        let dh4 = match &opk {
            Some((_, key)) => Some(dh("dh4", &ek_secret, key)?),
            None => None,
        };
        let (ct, ss) = hazmat::mlkem_encapsulate(&pq.public_key, &m).ok_or_else(|| err("pqpk_b", "invalid"))?;
        let transcript = hazmat::pqxdh_transcript(&TranscriptInput {
            initiator_identity: &ik_a,
            responder_identity: &ik_b,
            signed_prekey_id: spk.id,
            signed_prekey: &spk_b,
            one_time_prekey: opk.as_ref().map(|(id, key)| (*id, key)),
            pq_last_resort: pq.last_resort,
            pq_prekey_id: pq.id,
            pq_prekey: &pq.public_key,
            base_key: &ek_a,
            pq_ciphertext: &ct,
            initiator_address: &alice_address,
            responder_address: &address,
        })
        .ok_or_else(|| err("transcript", "a key was refused"))?;
        let mut dhs = vec![dh1, dh2, dh3];
        dhs.extend(dh4);
        let secrets = hazmat::pqxdh_secrets(&dhs, &ss, &transcript);
        let mut ikm = vec![0xff; 32];
        dhs.iter().for_each(|d| ikm.extend_from_slice(d));
        ikm.extend_from_slice(&ss);
        let mut info = PQXDH_LABEL.to_vec();
        info.extend_from_slice(&sha256(&transcript));
        let mut okm = [0u8; 96];
        Hkdf::<Sha256>::new(Some(&[0u8; 32]), &ikm).expand(&info, &mut okm).map_err(|_| err("info", "HKDF"))?;
        agree("root_key", &okm, &secrets)?;
        let (root_key, rest) = secrets.split_at(32);
        let (hka, nhkb) = rest.split_at(32);
        let ad = hazmat::session_associated_data(&ik_a, &ik_b).ok_or_else(|| err("ik_a", "refused"))?;

        // The initiator's ratchet (4.3.1) and message 0 (4.5).
        let alice_ratchet_key = hazmat::x25519_public(&ratchet_secret);
        let init_dh = dh("alice_init_dh", &ratchet_secret, &spk_b)?;
        let (rk1, ck0, nhks) = hazmat::root_step(&array::<32>("root_key", &h(root_key))?, &init_dh);
        let (seed, _) = hazmat::chain_step(&ck0);
        let (mk, mn) = hazmat::message_key(&seed, &nonce);
        let mut header = vec![0x01];
        header.extend_from_slice(&alice_ratchet_key);
        header.extend_from_slice(&[0; 8]);
        let eh = hazmat::seal_header(&array::<32>("hka", &h(hka))?, nonce, (&alice_ratchet_key, 0, 0), false, &ad);
        let mut body_ad = ad.clone();
        body_ad.extend_from_slice(&eh);
        let padded = hazmat::pad(&plaintext).ok_or_else(|| err("plaintext", "too long"))?;
        let body = chacha20poly1305_seal(&mk, &mn, &body_ad, &padded)?;

        // The first message carries exactly these values.
        let Ok(Message::PreKey(prekey)) = Message::from_bytes(&first) else {
            return Err(err("first_message", "not a prekey message"));
        };
        agree("encrypted_header", prekey.message().header(), &eh)?;
        agree("body", prekey.message().body(), &body)?;
        agree("ek_a", prekey.header().base_key().as_bytes(), &ek_a)?;
        agree("ik_a", prekey.header().identity_key().as_bytes(), &ik_a)?;
        let envelope = pb::Envelope::decode(first.get(1..).unwrap_or_default())
            .map_err(|e| err("first_message", e.to_string()))?;
        let Some(pb::envelope::Body::Prekey(prekey_pb)) = envelope.body else {
            return Err(err("first_message", "not a prekey message"));
        };
        agree("pq_ciphertext", &prekey_pb.pq_ciphertext, &ct)?;

        // Bob's side, then his reply.
        let bob_secret = array::<32>("bob_ratchet_secret", &case.bob_ratchet_secret)?;
        let mut bob_record = SessionRecord::new();
        let mut rng = FixedBytes::new(&bob_secret);
        let pending = bob_record
            .decrypt(&mut rng, &bob.identity, &address, &alice_address, &bob.prekeys, &first)
            .map_err(|e| err("bob_decrypted", e.to_string()))?;
        check_drawn("bob_ratchet_secret", &rng, 32)?;
        let bob_decrypted = pending.plaintext().to_vec();
        let consumed = pending.consumed_prekeys();
        bob_record.commit(pending).map_err(|e| err("bob_decrypted", e.to_string()))?;
        let mut rng = FixedBytes::new(&array::<24>("bob_header_nonce", &case.bob_header_nonce)?);
        let reply = bob_record.encrypt(&mut rng, &reply_plaintext).map_err(|e| err("reply", e.to_string()))?;
        check_drawn("bob_header_nonce", &rng, 24)?;
        let alice_prekeys = PreKeySet::new(&mut FixedBytes::new(&[]), &alice, UNIX_EPOCH);
        let mut rng = FixedBytes::new(&array::<32>("alice_reply_ratchet_secret", &case.alice_reply_ratchet_secret)?);
        let (alice_decrypted, _) = alice_record
            .decrypt_and_commit(&mut rng, &alice, &alice_address, &address, &alice_prekeys, &reply)
            .map_err(|e| err("alice_decrypted_reply", e.to_string()))?;
        check_drawn("alice_reply_ratchet_secret", &rng, 32)?;

        Ok(PqxdhCase {
            name: case.name.clone(),
            alice_identity_seed: case.alice_identity_seed.clone(),
            alice_user_id: case.alice_user_id.clone(),
            alice_device_id: case.alice_device_id,
            bob_identity_seed: case.bob_identity_seed.clone(),
            bob_user_id: case.bob_user_id.clone(),
            bob_device_id: case.bob_device_id,
            bob_prekey_randomness: case.bob_prekey_randomness.clone(),
            offer_one_time_prekey: case.offer_one_time_prekey,
            pq_prekey: case.pq_prekey,
            alice_base_key_secret: case.alice_base_key_secret.clone(),
            alice_mlkem_m: case.alice_mlkem_m.clone(),
            alice_ratchet_secret: case.alice_ratchet_secret.clone(),
            alice_header_nonce: case.alice_header_nonce.clone(),
            plaintext: case.plaintext.clone(),
            bob_ratchet_secret: case.bob_ratchet_secret.clone(),
            bob_header_nonce: case.bob_header_nonce.clone(),
            reply_plaintext: case.reply_plaintext.clone(),
            alice_reply_ratchet_secret: case.alice_reply_ratchet_secret.clone(),
            bundle: h(&bundle_bytes),
            ik_a: h(ik_a),
            ik_a_x25519_secret: h(*ik_a_secret),
            ik_a_x25519: h(ik_a_x),
            ik_b: h(ik_b),
            ik_b_x25519_secret: h(*ik_b_secret),
            ik_b_x25519: h(ik_b_x),
            spk_b_id: spk.id,
            spk_b: h(spk_b),
            opk_b_id: opk.map(|(id, _)| id),
            opk_b: opk.map(|(_, key)| h(key)),
            pqpk_b_id: pq.id,
            pqpk_b_last_resort: pq.last_resort,
            pqpk_b: h(&pq.public_key),
            ek_a: h(ek_a),
            dh1: h(dh1),
            dh2: h(dh2),
            dh3: h(dh3),
            dh4: dh4.map(h),
            pq_ciphertext: h(&ct),
            pq_shared_secret: h(ss),
            transcript: h(&transcript),
            transcript_sha256: h(sha256(&transcript)),
            ikm: h(&ikm),
            info: h(&info),
            root_key: h(root_key),
            hka: h(hka),
            nhkb: h(nhkb),
            associated_data: h(&ad),
            alice_ratchet_key: h(alice_ratchet_key),
            alice_init_dh: h(init_dh),
            alice_root_key_1: h(rk1),
            alice_chain_key_0: h(ck0),
            alice_next_header_key: h(nhks),
            message_key_seed: h(seed),
            message_key: h(mk),
            message_nonce: h(mn),
            header: h(&header),
            encrypted_header: h(eh),
            body: h(&body),
            first_message: h(&first),
            bob_decrypted: h(&bob_decrypted),
            bob_consumed_one_time_prekey: consumed.one_time,
            bob_consumed_pq_prekey: consumed.pq_one_time,
            bob_remembers_base_key: consumed.base_key.is_some(),
            bob_ratchet_key: h(hazmat::x25519_public(&bob_secret)),
            reply: h(&reply),
            alice_decrypted_reply: h(&alice_decrypted),
        })
    }
}
