// Healing through the Swift bindings (PROTOCOL.md 20): the same scenarios as
// ffi/tests/kotlin (HealingTest.kt) and ffi/tests/python (test_healing.py).
// Not compiled on the project's Linux machines (no Swift toolchain there): run
// with `swift test` on macOS as README.md's "Bindings" section describes.
import Foundation
import Samizdat
import XCTest

final class HealingTests: XCTestCase {
    private var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(at: dir)
    }

    private func pair() throws -> (Device, Device, Address) {
        let alice = try Device.openOrCreate(
            path: dir.appendingPathComponent("alice.db"), storageKey: Data(repeating: 1, count: 32),
            userId: "alice", deviceId: 1, now: at(0))
        let bob = try Device.openOrCreate(
            path: dir.appendingPathComponent("bob.db"), storageKey: Data(repeating: 2, count: 32),
            userId: "bob", deviceId: 1, now: at(0))
        return (alice, bob, try alice.startSession(bundle: bob.prekeyBundle()))
    }

    func testTheOutboxKeepsAMessageUntilItIsAcknowledged() throws {
        let (alice, bob, bobAddress) = try pair()
        let wire = try alice.encryptKept(peer: bobAddress, plaintext: Data("kept".utf8), now: at(1000))
        XCTAssertEqual(try alice.outboxLen(peer: bobAddress), 1)
        let pending = try bob.decrypt(sender: alice.address(), ciphertext: wire)
        let id = try XCTUnwrap(pending.messageId())
        XCTAssertEqual(id, messageId(wire: wire))
        XCTAssertEqual(try bob.commit(pending: pending), [])
        XCTAssertEqual(try alice.acknowledge(peer: bobAddress, ids: [id, Data(count: 16)]), 1)
        XCTAssertEqual(try alice.outboxLen(peer: bobAddress), 0)
    }

    func testALostMessageIsHealed() throws {
        let (alice, bob, bobAddress) = try pair()
        let first = try alice.encryptKept(peer: bobAddress, plaintext: Data("first".utf8), now: at(0))
        try bob.commit(pending: bob.decrypt(sender: alice.address(), ciphertext: first))
        let lost = try alice.encryptKept(peer: bobAddress, plaintext: Data("lost".utf8), now: at(0))
        // Say Bob could not read `lost`: he heals with Alice's fresh bundle.
        guard case let .sent(reset) = try bob.heal(bundle: alice.prekeyBundle(), unreadable: [lost], now: at(10)) else {
            return XCTFail("no reset")
        }
        let onAlice = try alice.decrypt(sender: bob.address(), ciphertext: reset.message)
        XCTAssertEqual(onAlice.kind(), .control)
        let resends = try alice.commit(pending: onAlice)
        XCTAssertEqual(resends.count, 1)
        let again = try bob.decrypt(sender: alice.address(), ciphertext: resends[0].message)
        XCTAssertEqual(again.kind(), .direct)
        XCTAssertEqual(again.plaintext(), Data("lost".utf8))
        XCTAssertEqual(again.messageId(), messageId(wire: lost))
        try bob.commit(pending: again)
        // The late original is a duplicate; a second reset within the hour is refused.
        XCTAssertThrowsError(try bob.decrypt(sender: alice.address(), ciphertext: lost)) { error in
            XCTAssertEqual((error as? SamizdatError)?.code(), "duplicate")
        }
        XCTAssertEqual(
            try bob.heal(bundle: alice.prekeyBundle(), unreadable: [], now: at(20)), .tooSoon(retryAt: at(10 + 3600)))
    }
}
