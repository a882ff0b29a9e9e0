// The store as an app administers it, through the Swift bindings (PROTOCOL.md 14.9, 14.12): the same
// scenarios as ffi/tests/kotlin (StoreTest.kt) and ffi/tests/python (test_store.py).
// Not compiled on the project's Linux machines (no Swift toolchain there): run
// with `swift test` on macOS as README.md's "Bindings" section describes.
import Foundation
import Samizdat
import XCTest

final class StoreTests: XCTestCase {
    private var dir: URL!
    private let oldKey = Data(repeating: 2, count: 32)
    private let newKey = Data(repeating: 9, count: 32)

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(at: dir)
    }

    private func device(_ name: String, _ key: Data) throws -> Device {
        try Device.openOrCreate(
            path: dir.appendingPathComponent("\(name).db"), storageKey: key, userId: name, deviceId: 1, now: at(0))
    }

    private func receive(_ to: Device, _ from: Device, _ wire: Data) throws -> String {
        let pending = try to.decrypt(sender: from.address(), ciphertext: wire)
        let text = String(decoding: pending.plaintext(), as: UTF8.self)
        _ = try to.commit(pending: pending)
        return text
    }

    func testPeersDeleteSessionAndSkippedKeys() throws {
        let bob = try device("bob", oldKey)
        let alice = try device("alice", Data(repeating: 1, count: 32))
        let carol = try device("carol", Data(repeating: 3, count: 32))
        XCTAssertEqual(try bob.peers(), [])
        for peer in [alice, carol] {
            _ = try peer.startSession(bundle: bob.prekeyBundle())
            XCTAssertEqual(try receive(bob, peer, peer.encrypt(peer: bob.address(), plaintext: Data("hi".utf8))), "hi")
        }
        XCTAssertEqual(Set(try bob.peers().map(\.userId)), ["alice", "carol"])
        let first = try alice.encrypt(peer: bob.address(), plaintext: Data("first".utf8))
        _ = try alice.encrypt(peer: bob.address(), plaintext: Data("second".utf8))
        XCTAssertEqual(try receive(bob, alice, alice.encrypt(peer: bob.address(), plaintext: Data("third".utf8))), "third")
        XCTAssertEqual(try bob.skippedKeyCount(peer: alice.address()), 2)
        XCTAssertTrue(try bob.deleteSession(peer: alice.address()))
        XCTAssertFalse(try bob.deleteSession(peer: alice.address()))
        XCTAssertEqual(try bob.peers(), [carol.address()])
        XCTAssertThrowsError(try bob.decrypt(sender: alice.address(), ciphertext: first)) { error in
            guard case SamizdatError.OutOfStep = error else { return XCTFail("\(error)") }
        }
        XCTAssertEqual(try bob.scrub(), .done)
        XCTAssertNoThrow(try bob.checkIntegrity())
    }

    func testRotatingTheStorageKey() throws {
        let path = dir.appendingPathComponent("bob.db")
        var bob: Device? = try device("bob", oldKey)
        let alice = try device("alice", Data(repeating: 1, count: 32))
        _ = try alice.startSession(bundle: bob!.prekeyBundle())
        let inFlight = try alice.encrypt(peer: bob!.address(), plaintext: Data("in flight".utf8))
        bob = nil
        XCTAssertEqual(try rotateStorageKey(path: path, oldKey: oldKey, newKey: newKey), .done)
        XCTAssertThrowsError(try Device.open(path: path, storageKey: oldKey)) { error in
            guard case SamizdatError.WrongStorageKey = error else { return XCTFail("\(error)") }
        }
        let rotated = try Device.open(path: path, storageKey: newKey)
        XCTAssertEqual(try receive(rotated, alice, inFlight), "in flight")
    }
}
