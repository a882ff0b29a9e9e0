// The samizdat bindings in Swift. Not compiled on the project's Linux machines (no Swift toolchain
// there): run with `swift test` on macOS as README.md's "Bindings" section describes.
import Foundation
import Samizdat
import XCTest

final class DeviceTests: XCTestCase {
    private var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(at: dir)
    }

    func testReadmeConversation() throws {
        // README-BEGIN
        let aliceKey = Data(repeating: 1, count: 32) // from the Keychain in a real app
        let bobKey = Data(repeating: 2, count: 32)
        let alice = try Device.openOrCreate(
            path: dir.appendingPathComponent("alice.db"), storageKey: aliceKey, userId: "alice", deviceId: 1, now: Date())
        let bob = try Device.openOrCreate(
            path: dir.appendingPathComponent("bob.db"), storageKey: bobKey, userId: "bob", deviceId: 1, now: Date())

        // Bob's bundle travels through a server; Alice verifies it and opens a session.
        let bobAddress = try alice.startSession(bundle: bob.prekeyBundle())
        let wire = try alice.encrypt(peer: bobAddress, plaintext: Data("hello".utf8))

        // Two-phase decrypt: store the plaintext, then commit, then ack to the server.
        let pending = try bob.decrypt(sender: alice.address(), ciphertext: wire)
        XCTAssertEqual(pending.plaintext(), Data("hello".utf8))
        try bob.commit(pending: pending)
        XCTAssertThrowsError(try bob.decrypt(sender: alice.address(), ciphertext: wire)) { error in
            XCTAssertEqual((error as? SamizdatError)?.code(), "duplicate")
        }
        XCTAssertEqual(try alice.safetyNumber(peer: bobAddress).digits, try bob.safetyNumber(peer: alice.address()).digits)
        // README-END
    }

    func testWrongStorageKeyAndSecondHandle() throws {
        let path = dir.appendingPathComponent("alice.db")
        var alice: Device? = try Device.create(path: path, storageKey: Data(repeating: 1, count: 32), userId: "alice", deviceId: 1, now: at(0))
        // A second handle shares the store (every write is conditional on what it read).
        let second = try Device.open(path: path, storageKey: Data(repeating: 1, count: 32))
        XCTAssertEqual(second.identityKey(), alice?.identityKey())
        XCTAssertEqual(alice?.address(), Address(userId: "alice", deviceId: 1))
        alice = nil // the last reference: the store is released
        XCTAssertThrowsError(try Device.open(path: path, storageKey: Data(repeating: 2, count: 32))) { error in
            XCTAssertEqual((error as? SamizdatError)?.code(), "wrong_storage_key")
        }
        XCTAssertNoThrow(try Device.open(path: path, storageKey: Data(repeating: 1, count: 32)))
    }
}
