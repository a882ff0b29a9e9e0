// User identities and signed device lists through the Swift bindings (PROTOCOL.md 23): the same
// scenarios as ffi/tests/kotlin (UserTest.kt) and ffi/tests/python (test_users.py).
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
            path: dir.appendingPathComponent("\(name)-\(deviceId).db").path,
            storageKey: Data(repeating: key, count: 32), userId: name, deviceId: deviceId, now: 0)
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
        XCTAssertEqual(onAlice.digits(), onBob.digits())
        XCTAssertNoThrow(try onAlice.compareScanned(scanned: onBob.scannable()))
    }
}
