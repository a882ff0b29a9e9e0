//! A world of devices in groups, for the group tests: every pair has a
//! session both ways, and messages are delivered by hand.

use samizdat::store::StorageKey;
use samizdat::{
    address::Address,
    device::{Device, DeviceError, GroupError, GroupSend, MessageKind, Outgoing},
    store::{Backend, MemoryBackend, Table},
};
use std::time::UNIX_EPOCH;

/// The devices, named `m0`, `m1`, ...
pub struct World {
    pub devices: Vec<Device<MemoryBackend>>,
}

/// What a delivery gave the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// A group message's plaintext.
    Group(Vec<u8>),
    /// A direct message's plaintext.
    Direct(Vec<u8>),
    /// A control message, committed; the answer it produced, if any.
    Control(Option<Outgoing>),
}

pub fn address(i: usize) -> Address {
    Address::new(format!("m{i}"), 1).unwrap()
}

impl World {
    /// `n` devices with sessions between every two of them.
    pub fn new(n: usize) -> Self {
        let devices: Vec<_> = (0..n)
            .map(|i| {
                let key = [u8::try_from(i + 1).unwrap(); 32];
                Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes(key), address(i), UNIX_EPOCH).unwrap()
            })
            .collect();
        let world = Self { devices };
        for i in 0..n {
            for j in i + 1..n {
                world.connect(i, j);
            }
        }
        world
    }

    /// A session between `i` and `j`, usable both ways.
    pub fn connect(&self, i: usize, j: usize) {
        let (a, b) = (&self.devices[i], &self.devices[j]);
        a.start_session(&b.prekey_bundle().unwrap()).unwrap();
        let hello = a.encrypt(b.address(), b"hello").unwrap();
        b.commit(b.decrypt(a.address(), &hello).unwrap()).unwrap();
        let back = b.encrypt(a.address(), b"hello back").unwrap();
        a.commit(a.decrypt(b.address(), &back).unwrap()).unwrap();
    }

    pub fn device(&self, i: usize) -> &Device<MemoryBackend> {
        &self.devices[i]
    }

    /// Every device creates `group` with the others of `members` (indices).
    pub fn create(&self, group: &[u8], members: &[usize]) {
        for &i in members {
            let others: Vec<Address> = members.iter().filter(|&&j| j != i).map(|&j| address(j)).collect();
            self.devices[i].create_group(group, &others).unwrap();
        }
    }

    /// Decrypts and commits `bytes` from `from` at `to`.
    pub fn receive(&self, from: usize, to: usize, bytes: &[u8]) -> Result<Got, DeviceError> {
        let device = &self.devices[to];
        let pending = device.decrypt(&address(from), bytes)?;
        let kind = pending.kind();
        let plaintext = pending.plaintext().to_vec();
        let mut sent = device.commit(pending)?;
        assert!(sent.len() <= 1, "a group commit returns at most one message");
        let answer = sent.pop();
        Ok(match kind {
            MessageKind::Group => Got::Group(plaintext),
            MessageKind::Direct => Got::Direct(plaintext),
            _ => Got::Control(answer),
        })
    }

    /// Delivers a send's distributions (each to its recipient), checking
    /// each is a control message with no answer.
    pub fn distribute(&self, from: usize, sent: &GroupSend) {
        for outgoing in &sent.distributions {
            let to = self.index(&outgoing.to);
            assert_eq!(self.receive(from, to, &outgoing.message).unwrap(), Got::Control(None));
        }
    }

    /// `from` sends `text` to `group`; its distributions are delivered; the
    /// group message is returned.
    pub fn send(&self, from: usize, group: &[u8], text: &[u8]) -> GroupSend {
        let sent = self.devices[from].group_encrypt(group, text).unwrap();
        self.distribute(from, &sent);
        sent
    }

    pub fn index(&self, address: &Address) -> usize {
        self.devices.iter().position(|d| d.address() == address).unwrap()
    }

    /// Every row of device `i`'s store, table by table.
    pub fn snapshot(&self, i: usize) -> Snapshot {
        snapshot(&self.devices[i])
    }
}

/// Every row of a store, table by table ([`Table::ALL`]).
pub type Snapshot = Vec<Vec<(Vec<u8>, Vec<u8>)>>;

/// Every row of `device`'s store, table by table.
pub fn snapshot(device: &Device<MemoryBackend>) -> Snapshot {
    Table::ALL.iter().map(|&t| device.backend().scan(t).unwrap()).collect()
}

/// Whether `result` is a missing chain, and its request.
pub fn missing_chain(result: Result<Got, DeviceError>) -> Option<Option<Vec<u8>>> {
    match result {
        Err(DeviceError::Group(GroupError::MissingChain { request, .. })) => Some(request),
        _ => None,
    }
}
