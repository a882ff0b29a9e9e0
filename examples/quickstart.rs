//! Quickstart: three devices, Alice, Bob and Carol, each in its own
//! encrypted SQLite store. Alice fetches Bob's prekey bundle, opens a
//! post-quantum (PQXDH) session, and they converse over the Double Ratchet:
//! messages arrive out of order, one twice, one tampered with; Bob decrypts
//! in two phases and a whole queue in one batch. Both print the same safety
//! number. Then the three form a group (Sender Keys): each message is
//! encrypted once for all, each sender's chain reaches the others once, in
//! their sessions; Carol is removed (and leaves), the others rotate, and she
//! cannot read what follows. Then a phone restored from a backup heals its session by
//! itself, and the message it could not read arrives again. Last, a user
//! with two devices: Frank links his laptop to his phone by a code, the
//! contact who verified Frank's safety number needs no new verification,
//! and one message to Frank reaches both of his devices (and Frank's phone
//! tells his laptop what it sent); a group that addresses the user Frank
//! drops his lost laptop when his newer list does.
//!
//! Run it again and the conversation continues from disk (Carol is added
//! back with a new chain of hers).
//!
//! ```sh
//! cargo run --example quickstart              # stores in target/quickstart
//! cargo run --example quickstart -- /tmp/qs   # or in a directory you name
//! ```

use samizdat::store::StorageKey;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use samizdat::{
    DecryptError, ErrorKind, SessionError,
    address::Address,
    attachment::{self, Attachment},
    device::{Device, DeviceError, GroupError, GroupSend, MessageKind},
    store::Backend,
};

const GROUP: &[u8] = b"book club";

fn now() -> u64 {
    SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The 32-byte storage key. A real app keeps it in the platform keystore
/// (Android Keystore, iOS Keychain); this example keeps it in a file next to
/// the database, which is only a stand-in.
fn storage_key(dir: &Path, name: &str) -> std::io::Result<StorageKey> {
    let path = dir.join(format!("{name}.key"));
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(key) = StorageKey::try_from(bytes.as_slice())
    {
        return Ok(key);
    }
    let key = StorageKey::generate();
    std::fs::write(&path, key.as_bytes())?;
    Ok(key)
}

fn open(dir: &Path, name: &str) -> Result<Device, Box<dyn std::error::Error>> {
    let key = storage_key(dir, name)?;
    Ok(Device::open_or_create(dir.join(format!("{name}.db")), &key, Address::new(name, 1)?, SystemTime::now())?)
}

/// Decrypts, "stores" the plaintext (prints it), then commits.
fn receive<B: Backend>(to: &Device<B>, from: &Device<B>, wire: &[u8], label: &str) -> Result<(), DeviceError> {
    let pending = to.decrypt(from.address(), wire)?;
    println!(
        "{:<5} <- {:<5} {label} ({} bytes): {}",
        to.address().user_id(),
        from.address().user_id(),
        wire.len(),
        String::from_utf8_lossy(pending.plaintext())
    );
    to.commit(pending)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).map_or_else(|| PathBuf::from("target/quickstart"), PathBuf::from);
    std::fs::create_dir_all(&dir)?;
    let alice = open(&dir, "alice")?;
    let bob = open(&dir, "bob")?;
    bob.refill_prekeys(5, 20, SystemTime::now())?;

    if alice.has_session(bob.address())? {
        println!("alice :  session with bob found in {}: continuing the conversation", dir.display());
    } else {
        // Bob's server hands Alice a bundle; it is verified completely before use.
        let bundle = bob.prekey_bundle()?;
        alice.start_session(&bundle)?;
        println!("alice :  fetched bob's bundle ({} bytes), verified it, opened a PQXDH session", bundle.len());
    }

    // Alice sends three messages; the network delivers them 3, 1, 2.
    let stamp = now();
    let texts = [format!("Hi Bob! ({stamp})"), "Are you there?".to_owned(), "Meet at noon.".to_owned()];
    let sent: Vec<Vec<u8>> =
        texts.iter().map(|t| alice.encrypt(bob.address(), t.as_bytes())).collect::<Result<_, _>>()?;
    for n in [2, 0, 1] {
        if let Some(wire) = sent.get(n) {
            receive(&bob, &alice, wire, &format!("#{}", n + 1))?;
        }
    }
    let (x25519_left, mlkem_left) = bob.prekey_counts()?;
    println!("bob   :  one-time prekeys left: {x25519_left} X25519, {mlkem_left} ML-KEM");

    // A redelivery after the commit is a duplicate, never decrypted twice.
    if let Some(first) = sent.first() {
        match bob.decrypt(alice.address(), first) {
            // Every error has a stable code and the action it asks for.
            Err(e @ DeviceError::Session(SessionError::Decrypt(DecryptError::Duplicate { .. }))) => {
                println!("bob   :  #1 redelivered: {e} ({}: {})", e.kind(), e.kind().recovery().code())
            }
            other => return Err(format!("expected a duplicate, got {other:?}").into()),
        }
    }

    // Bob replies twice; a tampered copy of the second is rejected and
    // changes nothing.
    let reply = bob.encrypt(alice.address(), b"Noon works.")?;
    let again = bob.encrypt(alice.address(), b"See you there.")?;
    receive(&alice, &bob, &reply, "reply")?;
    let mut tampered = again.clone();
    if let Some(last) = tampered.last_mut() {
        *last ^= 0x01;
    }
    match alice.decrypt(bob.address(), &tampered) {
        Err(e @ DeviceError::Session(SessionError::Decrypt(DecryptError::Unauthenticated))) => {
            println!("alice :  tampered reply rejected: {e} ({}: {})", e.kind(), e.kind().recovery().code())
        }
        other => return Err(format!("expected a rejection, got {other:?}").into()),
    }
    receive(&alice, &bob, &again, "reply")?;

    // Bob was offline: five queued messages are decrypted and committed in one transaction.
    let queue: Vec<(Address, Vec<u8>)> = (1..=5)
        .map(|i| Ok((alice.address().clone(), alice.encrypt(bob.address(), format!("queued {i}").as_bytes())?)))
        .collect::<Result<_, DeviceError>>()?;
    let batch = bob.decrypt_batch(&queue)?;
    let delivered = batch.results().iter().filter(|r| r.is_ok()).count();
    bob.commit_batch(batch)?;
    println!("bob   :  decrypted and committed a batch of {delivered} queued messages in one transaction");

    // Both compare safety numbers, read aloud or scanned.
    let on_alice = alice.safety_number(bob.address())?;
    let on_bob = bob.safety_number(alice.address())?;
    println!("alice :  safety number {}", on_alice.display());
    println!("bob   :  safety number {}", on_bob.display());
    on_alice.compare_scanned(&on_bob.scannable())?;
    println!("alice :  scanned bob's code: match");

    attachment(&dir, &alice, &bob)?;
    group(&dir, &alice, &bob)?;
    heal()?;
    two_devices()?;
    println!("Run again to continue from {}", dir.display());
    Ok(())
}

/// A phone restored from a backup heals by itself: Erin's store goes back
/// to a copy, Dan's next message is out of step there, Erin's device heals
/// with Dan's fresh bundle, and Dan's device sends the message again from
/// its sealed outbox. (In memory: a scene apart from the stores above.)
fn heal() -> Result<(), Box<dyn std::error::Error>> {
    use samizdat::{
        device::Heal,
        store::{Expected, MemoryBackend, Write},
    };
    let copy = |store: &MemoryBackend| -> Result<MemoryBackend, Box<dyn std::error::Error>> {
        let backup = MemoryBackend::new();
        for ((table, key), value) in store.snapshot() {
            backup.apply(&[Write { table, key, value: Some(value), expected: Expected::Any }])?;
        }
        Ok(backup)
    };
    let dan =
        Device::create_in(MemoryBackend::new(), &StorageKey::generate(), Address::new("dan", 1)?, SystemTime::now())?;
    let erin_key = StorageKey::generate();
    let erin = Device::create_in(MemoryBackend::new(), &erin_key, Address::new("erin", 1)?, SystemTime::now())?;
    dan.start_session(&erin.prekey_bundle()?)?;
    let first = dan.encrypt_kept(erin.address(), b"first", SystemTime::now())?;
    erin.commit(erin.decrypt(dan.address(), &first)?)?;
    let backup = copy(erin.backend())?;
    // They talk on: each turn takes new ratchet keys the backup lacks.
    for text in ["ping", "pong"] {
        let (from, to) = if text == "ping" { (&erin, &dan) } else { (&dan, &erin) };
        let wire = from.encrypt_kept(to.address(), text.as_bytes(), SystemTime::now())?;
        to.commit(to.decrypt(from.address(), &wire)?)?;
    }
    let back = erin.encrypt_kept(dan.address(), b"back", SystemTime::now())?;
    dan.commit(dan.decrypt(erin.address(), &back)?)?;
    let lost = dan.encrypt_kept(erin.address(), b"Did the restore work?", SystemTime::now())?;
    let erin = Device::open_in(backup, &erin_key)?;
    println!("erin  :  phone restored from a backup");
    let error = match erin.decrypt(dan.address(), &lost) {
        Err(e) if e.kind() == ErrorKind::OutOfStep => e,
        other => return Err(format!("expected out of step, got {other:?}").into()),
    };
    println!("erin  :  dan's message: {error} ({}: {})", error.kind(), error.kind().recovery().code());
    let Heal::Sent(reset) = erin.heal(&dan.prekey_bundle()?, &[lost], SystemTime::now())? else {
        return Err("a reset was sent a moment ago".into());
    };
    println!("erin  :  fetched dan's bundle, sent a reset ({} bytes) naming the message", reset.message.len());
    let resent = dan.commit(dan.decrypt(erin.address(), &reset.message)?)?;
    println!("dan   :  installed the new session, sent {} message(s) again from the outbox", resent.len());
    for outgoing in &resent {
        receive(&erin, &dan, &outgoing.message, "sent again")?;
    }
    let wire = erin.encrypt(dan.address(), b"It did.")?;
    receive(&dan, &erin, &wire, "healed")?;
    Ok(())
}

/// A session between `a` and `b` usable both ways, unless there is one.
fn connect(a: &Device, b: &Device) -> Result<(), Box<dyn std::error::Error>> {
    if a.has_session(b.address())? && b.has_session(a.address())? {
        return Ok(());
    }
    a.start_session(&b.prekey_bundle()?)?;
    let hello = a.encrypt(b.address(), b"hello")?;
    b.commit(b.decrypt(a.address(), &hello)?)?;
    Ok(())
}

/// Delivers what `from` sent to `group` to `to`: its chain if `to` was given
/// it, then the group message. A message on a chain `to` lacks (its
/// distribution was lost, or `to` dropped the chain) comes with a request:
/// `from`'s device answers it, and the message decrypts.
/// Delivers `sent` to `to`: its plaintext, or the stable code of why it
/// cannot be read.
fn deliver(
    from: &Device,
    to: &Device,
    sent: &GroupSend,
) -> Result<Result<String, ErrorKind>, Box<dyn std::error::Error>> {
    for d in sent.distributions.iter().filter(|d| &d.to == to.address()) {
        let pending = to.decrypt(from.address(), &d.message)?;
        debug_assert_eq!(pending.kind(), MessageKind::Control);
        to.commit(pending)?;
    }
    let pending = match to.decrypt(from.address(), &sent.message) {
        Ok(pending) => pending,
        Err(DeviceError::Group(GroupError::MissingChain { request: Some(request), .. })) => {
            let answer = from.commit(from.decrypt(to.address(), &request)?)?.pop();
            // No answer: the sender gives its chain to members only.
            let Some(answer) = answer else { return Ok(Err(ErrorKind::MissingGroupKey)) };
            to.commit(to.decrypt(from.address(), &answer.message)?)?;
            println!("{:<5} :  lacked {}'s chain: asked, and got it", to.address().user_id(), from.address().user_id());
            to.decrypt(from.address(), &sent.message)?
        }
        Err(e @ DeviceError::Group(GroupError::MissingChain { request: None, .. } | GroupError::UnknownGroup)) => {
            return Ok(Err(e.kind()));
        }
        Err(e) => return Err(e.into()),
    };
    let text = String::from_utf8_lossy(pending.plaintext()).into_owned();
    to.commit(pending)?;
    Ok(Ok(text))
}

/// `from` sends `text` to the group, and it is delivered to `members`.
fn say(from: &Device, members: &[&Device], text: &str) -> Result<(), Box<dyn std::error::Error>> {
    let sent = from.group_encrypt(GROUP, text.as_bytes())?;
    println!(
        "{:<5} -> group {text:?}: one message of {} bytes, its chain sent in {} one-to-one message(s)",
        from.address().user_id(),
        sent.message.len(),
        sent.distributions.len()
    );
    for to in members.iter().filter(|m| m.address() != from.address()) {
        match deliver(from, to, &sent)? {
            Ok(text) => println!("{:<5} <- {:<5} group: {text}", to.address().user_id(), from.address().user_id()),
            Err(kind) => println!(
                "{:<5} <- {:<5} group: cannot read it ({kind}: {})",
                to.address().user_id(),
                from.address().user_id(),
                kind.recovery().code()
            ),
        }
    }
    Ok(())
}

fn group(dir: &Path, alice: &Device, bob: &Device) -> Result<(), Box<dyn std::error::Error>> {
    let carol = open(dir, "carol")?;
    connect(alice, &carol)?;
    connect(bob, &carol)?;
    let all = [alice, bob, &carol];
    // Each device is told the roster by its app; a second run adds Carol back.
    for device in all {
        let others: Vec<Address> = all.iter().map(|d| d.address().clone()).filter(|a| a != device.address()).collect();
        match device.create_group(GROUP, &others) {
            Err(DeviceError::Group(GroupError::AlreadyExists)) => device.add_group_members(GROUP, &others)?,
            result => result?,
        }
    }
    say(alice, &all, "Welcome to the book club!")?;
    say(alice, &all, "First book: The Dispossessed.")?;
    say(bob, &all, "Great choice.")?;
    say(&carol, &all, "I'm in.")?;

    // Carol leaves: Alice and Bob remove her, and rotate before their next
    // message; her own device leaves the group (a run after this one adds
    // her back, with a new chain of hers).
    alice.remove_group_members(GROUP, &[carol.address().clone()])?;
    bob.remove_group_members(GROUP, &[carol.address().clone()])?;
    carol.delete_group(GROUP)?;
    println!("alice, bob: removed carol; carol left the group");
    say(alice, &all, "Carol has left; new chains from here.")?;
    say(bob, &all, "Noted.")?;
    Ok(())
}

/// Alice sends Bob a photo: the file is encrypted to a blob (which the app
/// uploads to its server), and the 81-byte description (key, digest,
/// lengths) travels inside an ordinary encrypted message.
fn attachment(dir: &Path, alice: &Device, bob: &Device) -> Result<(), Box<dyn std::error::Error>> {
    let photo: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("photo.jpg"), &photo)?;
    let sent = attachment::encrypt_file(&dir.join("photo.jpg"), &dir.join("photo.blob"))?;
    let wire = alice.encrypt(bob.address(), &sent.to_bytes())?;
    println!(
        "alice -> bob: photo.jpg, {} bytes; blob of {} bytes uploaded",
        sent.plaintext_len(),
        sent.ciphertext_len()
    );
    // Bob: the message holds the description; the blob comes from the server.
    let pending = bob.decrypt(alice.address(), &wire)?;
    let received = Attachment::from_bytes(pending.plaintext())?;
    bob.commit(pending)?;
    attachment::decrypt_file(&received, &dir.join("photo.blob"), &dir.join("received.jpg"))?;
    let ok = std::fs::read(dir.join("received.jpg"))? == photo;
    println!("bob          : received.jpg, {} bytes, digest checked, same as sent: {ok}", received.plaintext_len());
    Ok(())
}

/// One user, two devices (in memory, a scene apart): Frank's phone holds
/// his user identity and a list naming it; his laptop shows a code, the
/// phone scans it and links the laptop (the server relays one sealed
/// message); Grace, who pinned Frank's user, takes the new list, and her
/// per-user safety number does not change; one message from Grace reaches
/// both of Frank's devices, and Frank's reply reaches Grace and, as a sent
/// sync, his laptop. Then Grace's group addresses the user Frank: when his
/// newer list drops the lost laptop, the group drops it too, and it cannot
/// read Grace's next group message.
fn two_devices() -> Result<(), Box<dyn std::error::Error>> {
    use samizdat::{
        store::MemoryBackend,
        user::{DeviceList, UserIdentityKeyPair},
    };
    let now = SystemTime::now();
    let device = |user: &str, id: u32| -> Result<Device<MemoryBackend>, Box<dyn std::error::Error>> {
        Ok(Device::create_in(MemoryBackend::new(), &StorageKey::generate(), Address::new(user, id)?, now)?)
    };
    let (phone, laptop, grace) = (device("frank", 1)?, device("frank", 2)?, device("grace", 1)?);
    // Each user's identity is made once, on the first device (the app keeps it in the keystore).
    let frank = UserIdentityKeyPair::generate(&mut samizdat::os_rng());
    phone.set_device_list(
        &DeviceList::new("frank", 1, &frank.public_key(), [(1, phone.identity_key())])?.sign(&frank)?,
    )?;
    let grace_user = UserIdentityKeyPair::generate(&mut samizdat::os_rng());
    grace.set_device_list(
        &DeviceList::new("grace", 1, &grace_user.public_key(), [(1, grace.identity_key())])?.sign(&grace_user)?,
    )?;
    grace.start_session(&phone.prekey_bundle()?)?;
    phone.start_session(&grace.prekey_bundle()?)?;
    let before = grace.user_safety_number("frank")?;
    println!("grace :  verified frank's safety number {}", before.display());

    // The laptop shows a code; the phone scans it and links the laptop.
    let offer = laptop.link_offer(now)?;
    let linked = phone.link_device(offer.code(), &frank, now)?;
    let provisioned = laptop.finish_link(&offer, &linked.message, now)?;
    println!(
        "frank :  laptop linked by a {}-byte code and a {}-byte sealed message: user identity received, {} contact(s) pinned",
        offer.code().len(),
        linked.message.len(),
        provisioned.newly_pinned
    );
    // Frank's app publishes the new list; Grace's takes it.
    grace.update_device_list(&linked.device_list)?;
    let after = grace.user_safety_number("frank")?;
    println!(
        "grace :  frank's list now names 2 devices; safety number unchanged: {}",
        after.digits() == before.digits()
    );

    // Grace writes to Frank (the user): one message per device.
    let first = grace.encrypt_to_user("frank", b"hello frank")?;
    for missing in &first.missing {
        println!("grace :  no session with {}/{} yet: fetched its bundle", missing.user_id(), missing.device_id());
        grace.start_session(&laptop.prekey_bundle()?)?;
    }
    let out = grace.encrypt_to_user_devices("frank", b"hello frank", &first.missing)?;
    for outgoing in first.messages.iter().chain(&out.messages) {
        let to = if outgoing.to == *phone.address() { &phone } else { &laptop };
        let pending = to.decrypt(grace.address(), &outgoing.message)?;
        println!("frank/{} <- grace: {}", outgoing.to.device_id(), String::from_utf8_lossy(pending.plaintext()));
        to.commit(pending)?;
    }
    // Frank answers from his phone; his laptop learns what he sent.
    phone.start_session(&laptop.prekey_bundle()?)?;
    let reply = phone.encrypt_to_user("grace", b"hi grace, from my phone")?;
    for outgoing in &reply.messages {
        let pending = grace.decrypt(phone.address(), &outgoing.message)?;
        println!("grace <- frank/1: {}", String::from_utf8_lossy(pending.plaintext()));
        grace.commit(pending)?;
    }
    for sync in &reply.syncs {
        let pending = laptop.decrypt(phone.address(), &sync.message)?;
        println!(
            "frank/2: sent sync from the phone, to {}: {}",
            pending.sync_recipient().unwrap_or("?"),
            String::from_utf8_lossy(pending.plaintext())
        );
        laptop.commit(pending)?;
    }

    // Grace's group addresses the user Frank: his list decides his member devices.
    const CLUB: &[u8] = b"running club";
    grace.create_group(CLUB, &[])?;
    grace.add_group_users(CLUB, &["frank"])?;
    for device in [&phone, &laptop] {
        device.create_group(CLUB, &[grace.address().clone()])?;
    }
    let devices = |d: &Device<MemoryBackend>| -> Result<String, Box<dyn std::error::Error>> {
        let members = d.group_members(CLUB)?;
        Ok(members.iter().map(|a| format!("{}/{}", a.user_id(), a.device_id())).collect::<Vec<_>>().join(", "))
    };
    println!("grace :  group of the user frank: member devices {}", devices(&grace)?);
    // Frank loses his laptop: his phone signs a list without it; Grace's app takes it.
    let without = DeviceList::new("frank", 3, &frank.public_key(), [(1, phone.identity_key())])?.sign(&frank)?;
    phone.set_device_list(&without)?;
    grace.update_device_list(&without)?;
    println!("grace :  frank's newer list drops the laptop: member devices {}", devices(&grace)?);
    let sent = grace.group_encrypt(CLUB, b"run at 7")?;
    for outgoing in &sent.distributions {
        let to = if outgoing.to == *phone.address() { &phone } else { &laptop };
        to.commit(to.decrypt(grace.address(), &outgoing.message)?)?;
    }
    for (name, to) in [("frank/1", &phone), ("frank/2", &laptop)] {
        match to.decrypt(grace.address(), &sent.message) {
            Ok(pending) => {
                println!("{name} <- grace group: {}", String::from_utf8_lossy(pending.plaintext()));
                to.commit(pending)?;
            }
            Err(e) => println!("{name} <- grace group: cannot read it ({}: the chain rotated without it)", e.kind()),
        }
    }
    Ok(())
}
