// User identities and signed device lists through the Swift bindings (PROTOCOL.md 23), and on a
// Device (23.5: ghost devices refused, a newly listed device accepted, a rolled-back list refused):
// the same scenarios as ffi/tests/kotlin (UserTest.kt) and ffi/tests/python (test_users.py).
// Not compiled on the project's Linux machines (no Swift toolchain there): run
// with `swift test` on macOS as README.md's "Bindings" section describes.
import Foundation
import Samizdat
import XCTest

final class UserTests: XCTestCase {
    private var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(at: dir)
    }

    private func device(_ name: String, _ deviceId: Int64, _ key: UInt8) throws -> Device {
        try Device.openOrCreate(
            path: dir.appendingPathComponent("\(name)-\(deviceId).db"),
            storageKey: Data(repeating: key, count: 32), userId: name, deviceId: deviceId, now: at(0))
    }

    private func listed(_ device: Device) -> ListedDevice {
        ListedDevice(deviceId: device.address().deviceId, identityKey: device.identityKey())
    }

    func testAGhostDeviceIsRefusedAndANewerListAccepted() throws {
        let alice = UserIdentity.generate()
        let phone = try device("alice", 1, 1)
        let laptop = try device("alice", 2, 2)
        let ghost = try device("server", 2, 3)
        let first = try alice.signDeviceList(userId: "alice", version: 1, devices: [listed(phone)])
        let trust = try UserTrust.firstUse(userId: "alice", signedList: first)
        XCTAssertEqual(trust.userIdentityKey(), alice.publicKey())
        XCTAssertNoThrow(try trust.checkDevice(deviceId: 1, identityKey: phone.identityKey()))
        XCTAssertThrowsError(try trust.checkDevice(deviceId: 2, identityKey: ghost.identityKey())) { error in
            XCTAssertEqual((error as? SamizdatError)?.code(), "untrusted_identity")
        }
        let second = try alice.signDeviceList(userId: "alice", version: 2, devices: [listed(laptop), listed(phone)])
        let change = try trust.update(signedList: second)
        XCTAssertEqual(change.added, [listed(laptop)])
        XCTAssertEqual(change.removed, [])
        XCTAssertNoThrow(try trust.checkDevice(deviceId: 2, identityKey: laptop.identityKey()))
        let before = trust.toBytes()
        XCTAssertThrowsError(try trust.update(signedList: first)) { error in
            XCTAssertEqual((error as? SamizdatError)?.code(), "invalid_bundle")
        }
        XCTAssertEqual(trust.toBytes(), before)
    }

    func testAnotherUserKeyNeedsTheAppsDecision() throws {
        let alice = UserIdentity.generate()
        let mallory = UserIdentity.generate()
        let phone = try device("alice", 1, 1)
        let trust = try UserTrust.firstUse(
            userId: "alice", signedList: try alice.signDeviceList(userId: "alice", version: 1, devices: [listed(phone)]))
        let forged = try mallory.signDeviceList(userId: "alice", version: 99, devices: [listed(phone)])
        XCTAssertThrowsError(try trust.update(signedList: forged)) { error in
            XCTAssertEqual((error as? SamizdatError)?.code(), "untrusted_identity")
        }
        _ = try trust.trustNewIdentity(signedList: forged)
        XCTAssertEqual(trust.userIdentityKey(), mallory.publicKey())
    }

    func testUserSafetyNumbersAreTheSameOnBothSides() throws {
        let alice = UserIdentity.generate()
        let bob = UserIdentity.generate()
        let onAlice = try userSafetyNumber(
            localUserId: "alice", localUserIdentityKey: alice.publicKey(), remoteUserId: "bob",
            remoteUserIdentityKey: bob.publicKey())
        let onBob = try userSafetyNumber(
            localUserId: "bob", localUserIdentityKey: bob.publicKey(), remoteUserId: "alice",
            remoteUserIdentityKey: alice.publicKey())
        XCTAssertEqual(onAlice.digits, onBob.digits)
        XCTAssertNoThrow(try onAlice.compareScanned(scanned: onBob.scannable))
        // A plain value: equal to the same number from another call, usable in a set; the peer's
        // has the same digits and the mirror image of the code.
        let again = try userSafetyNumber(
            localUserId: "alice", localUserIdentityKey: alice.publicKey(), remoteUserId: "bob",
            remoteUserIdentityKey: bob.publicKey())
        XCTAssertEqual(onAlice, again)
        XCTAssertTrue(Set([onAlice]).contains(again))
        XCTAssertNotEqual(onAlice, onBob)
        XCTAssertEqual(onAlice.display.replacingOccurrences(of: " ", with: ""), onAlice.digits)
    }

    func testADeviceRefusesAGhostAndAcceptsANewlyListedDevice() throws {
        let alice = UserIdentity.generate()
        let phone = try device("alice", 1, 1)
        let laptop = try device("alice", 2, 2)
        let bob = try device("bob", 1, 4)
        let ghost = try Device.openOrCreate(
            path: dir.appendingPathComponent("ghost.db"),
            storageKey: Data(repeating: 3, count: 32), userId: "alice", deviceId: 2, now: at(0))
        let first = try alice.signDeviceList(userId: "alice", version: 1, devices: [listed(phone)])
        XCTAssertEqual(try phone.setDeviceList(signedList: first).added, [listed(phone)])
        XCTAssertEqual(try phone.deviceList(), first)
        XCTAssertThrowsError(try laptop.setDeviceList(signedList: first)) { error in
            XCTAssertEqual((error as? SamizdatError)?.code(), "invalid_argument")
        }
        XCTAssertNil(try laptop.deviceList())

        // Bob pins Alice's user from the list her phone's bundle carries.
        XCTAssertNil(try bob.userTrust(userId: "alice"))
        let phoneAddress = try bob.startSession(bundle: try phone.prekeyBundle())
        XCTAssertEqual(try bob.userTrust(userId: "alice")?.userIdentityKey(), alice.publicKey())

        // A ghost under Alice's next device id, and the laptop before a list names it: refused.
        let pinned = try bob.userTrust(userId: "alice")?.toBytes()
        for bundle in [try ghost.prekeyBundle(), try laptop.prekeyBundle()] {
            XCTAssertThrowsError(try bob.startSession(bundle: bundle)) { error in
                XCTAssertEqual((error as? SamizdatError)?.code(), "untrusted_identity")
                XCTAssertNil((error as? SamizdatError)?.identityKey())
            }
        }
        XCTAssertFalse(try bob.hasSession(peer: Address(userId: "alice", deviceId: 2)))
        XCTAssertEqual(try bob.userTrust(userId: "alice")?.toBytes(), pinned)
        _ = try ghost.startSession(bundle: try bob.prekeyBundle())
        let counts = try bob.prekeyCounts()
        let wire = try ghost.encrypt(peer: bob.address(), plaintext: Data("let me in".utf8))
        XCTAssertThrowsError(try bob.decrypt(sender: ghost.address(), ciphertext: wire)) { error in
            XCTAssertEqual((error as? SamizdatError)?.code(), "untrusted_identity")
        }
        XCTAssertEqual(try bob.prekeyCounts(), counts)

        // A newer list names the laptop: accepted; the ghost still refused.
        let second = try alice.signDeviceList(
            userId: "alice", version: 2, devices: [listed(phone), listed(laptop)])
        _ = try laptop.setDeviceList(signedList: second)
        XCTAssertEqual(try bob.updateDeviceList(signedList: second).added, [listed(laptop)])
        let laptopAddress = try bob.startSession(bundle: try laptop.prekeyBundle())
        let pending = try laptop.decrypt(
            sender: bob.address(), ciphertext: try bob.encrypt(peer: laptopAddress, plaintext: Data("hi".utf8)))
        XCTAssertEqual(pending.plaintext(), Data("hi".utf8))
        _ = try laptop.commit(pending: pending)
        XCTAssertThrowsError(try bob.startSession(bundle: try ghost.prekeyBundle()))

        // The first list again: a rollback, refused; nothing changes.
        let newest = try bob.userTrust(userId: "alice")?.toBytes()
        XCTAssertThrowsError(try bob.updateDeviceList(signedList: first)) { error in
            XCTAssertEqual((error as? SamizdatError)?.code(), "invalid_bundle")
        }
        XCTAssertEqual(try bob.userTrust(userId: "alice")?.toBytes(), newest)
        XCTAssertNoThrow(try bob.encrypt(peer: phoneAddress, plaintext: Data("still here".utf8)))
    }

    func testADeviceNeedsTheAppsDecisionForAnotherUserKey() throws {
        let alice = UserIdentity.generate()
        let mallory = UserIdentity.generate()
        let phone = try device("alice", 1, 1)
        let bob = try device("bob", 1, 4)
        _ = try bob.updateDeviceList(
            signedList: try alice.signDeviceList(userId: "alice", version: 1, devices: [listed(phone)]))
        let forged = try mallory.signDeviceList(userId: "alice", version: 9, devices: [listed(phone)])
        XCTAssertThrowsError(try bob.updateDeviceList(signedList: forged)) { error in
            XCTAssertEqual((error as? SamizdatError)?.identityKey(), mallory.publicKey())
        }
        XCTAssertEqual(try bob.userTrust(userId: "alice")?.userIdentityKey(), alice.publicKey())
        _ = try bob.trustNewUserIdentity(signedList: forged)
        XCTAssertEqual(try bob.userTrust(userId: "alice")?.userIdentityKey(), mallory.publicKey())
    }
}
