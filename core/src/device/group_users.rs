//! Groups that address users (PROTOCOL.md 18.8): a member user's member
//! devices are the devices of its newest verified list, and a device a list
//! no longer names stops being a member, with a rotation, before our next
//! message.
//!
//! The mechanism is a mark: every write of a user's list (a contact's list
//! given by the app or carried by a bundle, our own list, a linking) also
//! writes the groups table's row `lists` with a fresh random value. Each
//! group's own-chain row keeps the mark as read when its roster last
//! followed the lists ([`OwnRow::lists_seen`]). A send, or a message or
//! chain from a device that is not a member, compares the two (one row
//! read, no opening) and, where they differ, follows the lists first: the
//! roster's devices that their pinned user's list no longer names are
//! removed (our chain rotates), and the listed devices of its member users
//! that are not members yet are added. A mark, not a counter: a store
//! restored from an older copy cannot make a mark seen before current
//! again.
//!
//! Lock order: the group lock (held by the callers of
//! [`Device::follow_lists`]), then nothing else: the user rows are read
//! without their locks (a list written meanwhile writes a new mark, which
//! the next send follows).

use std::collections::{BTreeMap, BTreeSet};

use rand_core::Rng;

use super::{
    Device, DeviceError,
    groups::{GroupError, Loaded, OwnRow, Roster},
    lock, retry_on_conflict,
};
use crate::{
    address::Address,
    group::GroupId,
    keys::IdentityKey,
    limits::MAX_GROUP_MEMBERS,
    store::{Backend, Expected, StoreError, Table, Write},
    user::UserTrust,
};

/// The key of the lists mark in [`Table::Groups`] (other rows of the table
/// are keyed by 32-byte keyed hashes).
pub(super) const LISTS_MARK_ROW: &[u8] = b"lists";

/// What following the lists changes in a roster.
struct Follow {
    /// Members that their pinned user's newest list does not name.
    gone: Vec<Address>,
    /// Listed devices of member users that are not members yet.
    added: Vec<Address>,
    /// Whether listed devices were left out at [`MAX_GROUP_MEMBERS`].
    overflow: bool,
    /// Members whose listed identity key to record (it was not known, or
    /// the list names another one now).
    identities: Vec<(Address, IdentityKey)>,
    /// Whether a member is listed under another identity key than the one
    /// recorded for it (or, where none was, than the one its session
    /// trusts): our chain rotates.
    rekeyed: bool,
}

impl Follow {
    /// Whether following changes the roster.
    fn changes(&self) -> bool {
        !self.gone.is_empty() || !self.added.is_empty() || !self.identities.is_empty()
    }
}

impl<B: Backend> Device<B> {
    /// The lists mark as it is now: the sealed bytes of its row, empty if
    /// no list was ever written.
    pub(super) fn lists_mark(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self.backend.get(Table::Groups, LISTS_MARK_ROW)?.unwrap_or_default())
    }

    /// The write of a new lists mark (16 fresh random bytes, sealed): part
    /// of every transaction that writes a user's list, conditional on the
    /// mark as read now.
    pub(super) fn lists_mark_write(&self) -> Result<Write, StoreError> {
        let current = self.backend.get(Table::Groups, LISTS_MARK_ROW)?;
        let mut fresh = zeroize::Zeroizing::new([0u8; 16]);
        crate::os_rng().fill_bytes(fresh.as_mut());
        Ok(Write {
            table: Table::Groups,
            key: LISTS_MARK_ROW.to_vec(),
            value: Some(self.sealer.seal(&mut crate::os_rng(), Table::Groups, LISTS_MARK_ROW, fresh.as_ref())),
            expected: Expected::read(current),
        })
    }

    /// Follows the lists in `group_id` if a list was written since its
    /// roster last did (the caller holds the group lock): one transaction
    /// with the roster, the member rows and our chain's row. Returns our
    /// chain's row as it is after (`None`: no such group), and whether the
    /// roster changed.
    pub(super) fn follow_lists(&self, group_id: &GroupId) -> Result<Option<(Loaded<OwnRow>, bool)>, DeviceError> {
        retry_on_conflict(|| {
            // The mark before the lists: a list written after this read
            // leaves a mark that the next call follows.
            let mark = self.lists_mark()?;
            let Some(mut own) = self.load_own(group_id)? else { return Ok(None) };
            if own.value.lists_seen == mark {
                return Ok(Some((own, false)));
            }
            let mut roster = self.load_roster(group_id)?.ok_or(StoreError::Corrupt { table: Table::Groups })?;
            let follow = self.plan_follow(&roster.value)?;
            let changed = follow.changes();
            let mut writes = Vec::new();
            self.apply_follow(&mut roster.value, &mut own.value, &follow, &mut writes)?;
            // Devices left out at the limit: the mark is not taken as seen,
            // so the next send follows again (once there is room).
            own.value.lists_seen = if follow.overflow { Vec::new() } else { mark };
            if changed {
                writes.push(self.roster_write(&roster.value, Expected::Value(roster.sealed)));
            }
            let own_write = self.own_write(group_id, &own.value, Expected::Value(own.sealed));
            let sealed = own_write.value.clone().unwrap_or_default();
            writes.push(own_write);
            self.write(&writes)?;
            Ok(Some((Loaded { sealed, value: own.value }, changed)))
        })
    }

    /// Applies `follow` to `roster` and our chain's row, pushing the member
    /// rows' writes: the identities recorded, the members gone removed (a
    /// rotation), a rotation if a member was listed under another key, the
    /// members added.
    fn apply_follow(
        &self,
        roster: &mut Roster,
        own: &mut OwnRow,
        follow: &Follow,
        writes: &mut Vec<Write>,
    ) -> Result<(), StoreError> {
        for (address, identity) in &follow.identities {
            if let Some(member) = roster.members.iter_mut().find(|m| m.address == *address) {
                member.identity = Some(*identity);
            }
        }
        if !follow.gone.is_empty() {
            self.remove_from_roster(roster, own, &follow.gone, writes)?;
        }
        if follow.rekeyed {
            for member in &mut roster.members {
                *member = member.rotated();
            }
            *own = own.rotated();
        }
        self.add_to_roster(roster, own, &follow.added, writes)
    }

    /// The identity key `address`'s user's pinned list names for it, if the
    /// user is pinned and the list names it.
    pub(super) fn listed_key(&self, address: &Address) -> Result<Option<IdentityKey>, StoreError> {
        Ok(self.load_user(address.user_id())?.trust.and_then(|trust| trust.list().device(address.device_id()).copied()))
    }

    /// What following the lists changes in `roster`: each member user's
    /// listed devices (not this one) that are not members are added, in
    /// the order of the users and of their lists, while the roster has
    /// room; every member that its pinned user's list does not name goes
    /// (of a member user or not). Devices of users that are not pinned are
    /// left as they are.
    fn plan_follow(&self, roster: &Roster) -> Result<Follow, DeviceError> {
        let mut lists: BTreeMap<&str, Option<UserTrust>> = BTreeMap::new();
        let users = roster.members.iter().map(|m| m.address.user_id()).chain(roster.users.iter().map(String::as_str));
        for user in users {
            if !lists.contains_key(user) {
                lists.insert(user, self.load_user(user)?.trust);
            }
        }
        let unlisted = |address: &Address| matches!(lists.get(address.user_id()), Some(Some(trust)) if trust.list().device(address.device_id()).is_none());
        let gone: Vec<Address> = roster.members.iter().map(|m| &m.address).filter(|a| unlisted(a)).cloned().collect();
        // A member listed under another key than the one recorded (or, if
        // none was, than the one its session trusts): its old key may be in
        // someone else's hands, and holds our current chain.
        let (mut identities, mut rekeyed) = (Vec::new(), false);
        for member in &roster.members {
            let Some(Some(trust)) = lists.get(member.address.user_id()) else { continue };
            let Some(listed) = trust.list().device(member.address.device_id()).copied() else { continue };
            match member.identity {
                Some(recorded) if recorded == listed => continue,
                Some(_) => rekeyed = true,
                None => {
                    let row = self.sealer.address_key(&member.address);
                    let trusted = self.load_record(&row)?.1.trusted_identity();
                    rekeyed |= trusted.is_some_and(|trusted| trusted != listed);
                }
            }
            identities.push((member.address.clone(), listed));
        }
        let mut present: BTreeSet<(&str, u32)> =
            roster.members.iter().map(|m| (m.address.user_id(), m.address.device_id())).collect();
        let mut room = MAX_GROUP_MEMBERS.saturating_sub(roster.members.len().saturating_sub(gone.len()));
        let (mut added, mut overflow) = (Vec::new(), false);
        for user in &roster.users {
            let Some(Some(trust)) = lists.get(user.as_str()) else { continue };
            for &(device_id, _) in trust.list().devices() {
                let Ok(address) = Address::new(user.clone(), device_id) else { continue };
                if address == self.address || !present.insert((user.as_str(), device_id)) {
                    continue;
                }
                if room == 0 {
                    overflow = true;
                    continue;
                }
                room = room.saturating_sub(1);
                added.push(address);
            }
        }
        Ok(Follow { gone, added, overflow, identities, rekeyed })
    }

    /// Adds member users to a group: each user's member devices are from
    /// now on the devices of its newest verified list (this device apart):
    /// its listed devices are added now, a device a newer list adds becomes
    /// a member before our next message (and a message or chain from it is
    /// taken from then on), and a device a newer list drops stops being one
    /// before our next message, which then starts a new chain that it never
    /// receives (PROTOCOL.md 18.8). Our own user may be one: our other
    /// devices are then members. Users already members are left as they
    /// are.
    ///
    /// The call also follows every other member user's list now.
    ///
    /// # Errors
    /// [`GroupError::InvalidGroupId`], [`GroupError::UnknownGroup`];
    /// [`GroupError::UnpinnedUser`] for a user with no verified list on this
    /// device; [`GroupError::TooManyMembers`] if the listed devices would
    /// pass [`MAX_GROUP_MEMBERS`] (or the users would); a store error.
    /// Nothing was written.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use samizdat::store::StorageKey;
    /// use samizdat::{address::Address, device::Device, keys::IdentityKeyPair, store::MemoryBackend, user::{DeviceList, UserIdentityKeyPair}};
    ///
    /// let mut rng = samizdat::os_rng();
    /// let alice = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), Address::new("alice", 1)?, SystemTime::now())?;
    /// let bob_user = UserIdentityKeyPair::generate(&mut rng);
    /// let (phone, laptop) = (IdentityKeyPair::generate(&mut rng).public_key(), IdentityKeyPair::generate(&mut rng).public_key());
    /// alice.update_device_list(&DeviceList::new("bob", 1, &bob_user.public_key(), [(1, phone)])?.sign(&bob_user)?)?;
    ///
    /// alice.create_group(b"book club", &[])?;
    /// alice.add_group_users(b"book club", &["bob"])?;
    /// assert_eq!(alice.group_members(b"book club")?, vec![Address::new("bob", 1)?]);
    ///
    /// // Bob links his laptop and drops his phone: the group follows.
    /// alice.update_device_list(&DeviceList::new("bob", 2, &bob_user.public_key(), [(2, laptop)])?.sign(&bob_user)?)?;
    /// alice.group_encrypt(b"book club", b"hello")?;
    /// assert_eq!(alice.group_members(b"book club")?, vec![Address::new("bob", 2)?]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_group_users(&self, group_id: &[u8], users: &[&str]) -> Result<(), DeviceError> {
        self.check_process()?;
        let group_id = GroupId::new(group_id).ok_or(GroupError::InvalidGroupId)?;
        let _guard = lock(&self.group_lock);
        retry_on_conflict(|| {
            let mark = self.lists_mark()?;
            let mut roster = self.load_roster(&group_id)?.ok_or(GroupError::UnknownGroup)?;
            let mut own = self.load_own(&group_id)?.ok_or(StoreError::Corrupt { table: Table::Groups })?;
            for &user in users {
                if self.load_user(user)?.trust.is_none() {
                    return Err(GroupError::UnpinnedUser.into());
                }
                if !roster.value.users.iter().any(|u| u == user) {
                    roster.value.users.push(user.to_owned());
                }
            }
            if roster.value.users.len() > MAX_GROUP_MEMBERS {
                return Err(GroupError::TooManyMembers { max: MAX_GROUP_MEMBERS }.into());
            }
            let follow = self.plan_follow(&roster.value)?;
            if follow.overflow {
                return Err(GroupError::TooManyMembers { max: MAX_GROUP_MEMBERS }.into());
            }
            let mut writes = Vec::new();
            self.apply_follow(&mut roster.value, &mut own.value, &follow, &mut writes)?;
            own.value.lists_seen = mark;
            writes.push(self.roster_write(&roster.value, Expected::Value(roster.sealed)));
            writes.push(self.own_write(&group_id, &own.value, Expected::Value(own.sealed)));
            Ok(self.write(&writes)?)
        })
    }

    /// Removes member users from a group: the users, and every member
    /// device of theirs (also one added per device), as
    /// [`Self::remove_group_members`] removes devices: our next message
    /// starts a new chain that none of them receives. Users that are not
    /// members, and have no member device, are ignored; if none is, nothing
    /// changes.
    ///
    /// # Errors
    /// [`GroupError::InvalidGroupId`], [`GroupError::UnknownGroup`]; a store
    /// error.
    pub fn remove_group_users(&self, group_id: &[u8], users: &[&str]) -> Result<(), DeviceError> {
        self.check_process()?;
        let group_id = GroupId::new(group_id).ok_or(GroupError::InvalidGroupId)?;
        let _guard = lock(&self.group_lock);
        retry_on_conflict(|| {
            let mut roster = self.load_roster(&group_id)?.ok_or(GroupError::UnknownGroup)?;
            let mut own = self.load_own(&group_id)?.ok_or(StoreError::Corrupt { table: Table::Groups })?;
            let before = roster.value.users.len();
            roster.value.users.retain(|user| !users.contains(&user.as_str()));
            let gone: Vec<Address> = roster
                .value
                .members
                .iter()
                .map(|m| m.address.clone())
                .filter(|address| users.contains(&address.user_id()))
                .collect();
            if gone.is_empty() && roster.value.users.len() == before {
                return Ok(());
            }
            let mut writes = Vec::new();
            if !gone.is_empty() {
                self.remove_from_roster(&mut roster.value, &mut own.value, &gone, &mut writes)?;
                writes.push(self.own_write(&group_id, &own.value, Expected::Value(own.sealed)));
            }
            writes.push(self.roster_write(&roster.value, Expected::Value(roster.sealed)));
            Ok(self.write(&writes)?)
        })
    }

    /// The member users of a group, in the order they were added (see
    /// [`Self::add_group_users`]); [`Self::group_members`] gives the member
    /// devices.
    ///
    /// # Errors
    /// [`GroupError::InvalidGroupId`], [`GroupError::UnknownGroup`]; a store
    /// error.
    pub fn group_users(&self, group_id: &[u8]) -> Result<Vec<String>, DeviceError> {
        self.check_process()?;
        let group_id = GroupId::new(group_id).ok_or(GroupError::InvalidGroupId)?;
        Ok(self.load_roster(&group_id)?.ok_or(GroupError::UnknownGroup)?.value.users)
    }
}
