// Encrypted backup and restore through the Swift bindings (PROTOCOL.md 21): the same scenarios as
// ffi/tests/kotlin (BackupTest.kt) and ffi/tests/python (test_backup.py).
// Not compiled on the project's Linux machines (no Swift toolchain there): run
// with `swift test` on macOS as README.md's "Bindings" section describes.
import Foundation
import Samizdat
import XCTest

final class BackupTests: XCTestCase {
    private var dir: URL!
    private let passphrase = Data("correct horse battery staple".utf8)

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(at: dir)
    }

    private func device(_ name: String, _ key: UInt8) throws -> Device {
        try Device.openOrCreate(
            path: dir.appendingPathComponent("\(name).db"), storageKey: Data(repeating: key, count: 32),
            userId: name, deviceId: 1, now: at(0))
    }

    private func converse(_ alice: Device, _ bob: Device, _ tag: String, now: Date) throws {
        let toBob = try alice.encryptKept(peer: bob.address(), plaintext: Data("a \(tag)".utf8), now: now)
        let onBob = try bob.decrypt(sender: alice.address(), ciphertext: toBob)
        XCTAssertEqual(onBob.plaintext(), Data("a \(tag)".utf8))
        _ = try bob.commit(pending: onBob)
        let toAlice = try bob.encryptKept(peer: alice.address(), plaintext: Data("b \(tag)".utf8), now: now)
        let onAlice = try alice.decrypt(sender: bob.address(), ciphertext: toAlice)
        XCTAssertEqual(onAlice.plaintext(), Data("b \(tag)".utf8))
        _ = try alice.commit(pending: onAlice)
    }

    func testTheParameters() {
        XCTAssertEqual(backupParamsRecommended(), BackupParams(memoryKib: 65536, iterations: 3, parallelism: 1))
        XCTAssertEqual(backupParamsMinimum(), BackupParams(memoryKib: 19456, iterations: 2, parallelism: 1))
    }

    func testBackupConverseRestoreConverse() throws {
        let alice = try device("alice", 1)
        var bob: Device? = try device("bob", 2)
        _ = try alice.startSession(bundle: bob!.prekeyBundle())
        try converse(alice, bob!, "hello", now: at(0))
        let backup = try bob!.exportBackup(passphrase: passphrase, params: backupParamsMinimum(), now: at(10))
        XCTAssertEqual(try backupParamsOf(backup: backup), backupParamsMinimum())
        try converse(alice, bob!, "after the backup", now: at(20))
        let inFlight = try alice.encryptKept(peer: bob!.address(), plaintext: Data("in flight".utf8), now: at(30))
        let identity = bob!.identityKey()
        bob = nil
        try FileManager.default.removeItem(at: dir.appendingPathComponent("bob.db")) // the phone is lost

        let restored = try Device.restore(
            path: dir.appendingPathComponent("new-bob.db"), storageKey: Data(repeating: 9, count: 32),
            backup: backup, passphrase: passphrase, now: at(1000))
        XCTAssertEqual(restored.identityKey(), identity)
        XCTAssertEqual(try restored.peerIdentity(peer: alice.address()), alice.identityKey())
        XCTAssertThrowsError(try restored.decrypt(sender: alice.address(), ciphertext: inFlight)) { error in
            XCTAssertEqual((error as? SamizdatError)?.code(), "out_of_step")
        }
        guard case let .sent(reset) = try restored.heal(
            bundle: alice.prekeyBundle(), unreadable: [inFlight], now: at(1000))
        else {
            return XCTFail("no reset")
        }
        let onAlice = try alice.decrypt(sender: restored.address(), ciphertext: reset.message)
        let resends = try alice.commit(pending: onAlice)
        XCTAssertEqual(resends.count, 1)
        let again = try restored.decrypt(sender: alice.address(), ciphertext: resends[0].message)
        XCTAssertEqual(again.plaintext(), Data("in flight".utf8))
        XCTAssertEqual(again.messageId(), messageId(wire: inFlight))
        _ = try restored.commit(pending: again)
        try converse(alice, restored, "healed", now: at(1001))
    }

    func testWhatARestoreRefuses() throws {
        let alice = try device("alice", 1)
        let backup = try alice.exportBackup(passphrase: passphrase, params: backupParamsMinimum(), now: at(10))
        let path = dir.appendingPathComponent("restored.db")
        let key = Data(repeating: 8, count: 32)
        XCTAssertThrowsError(
            try Device.restore(path: path, storageKey: key, backup: backup, passphrase: Data("no".utf8), now: at(1000))
        ) { error in
            XCTAssertEqual((error as? SamizdatError)?.code(), "wrong_storage_key")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path.path), "a wrong passphrase creates no file")
        var hostile = backup
        hostile.replaceSubrange(5..<9, with: Data(repeating: 0xff, count: 4))
        XCTAssertThrowsError(
            try Device.restore(path: path, storageKey: key, backup: hostile, passphrase: passphrase, now: at(1000))
        ) { error in
            XCTAssertEqual((error as? SamizdatError)?.code(), "limit_exceeded")
        }
        let restored = try Device.restore(path: path, storageKey: key, backup: backup, passphrase: passphrase, now: at(1000))
        XCTAssertEqual(restored.identityKey(), alice.identityKey())
    }
}
