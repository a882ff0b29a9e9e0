// Groups (Sender Keys) through the Swift bindings: the same scenarios as ffi/tests/kotlin (GroupTest.kt)
// and ffi/tests/python (test_groups.py). Not compiled on the project's Linux machines (no Swift toolchain
// there): run with `swift test` on macOS as README.md's "Bindings" section describes.
import Foundation
import Samizdat
import XCTest

private let group = Data("book club".utf8)

/// What an app got from one delivery: the kind, the text, and what its commit returned (to send, in order).
private struct Received: Equatable {
    let kind: MessageKind
    let text: String
    var answers: [Outgoing] = []
}

/// `n` devices (`m0`, `m1`, ...) on SQLite stores, with a session between every two; messages are
/// delivered by hand, in whatever order a test wants, as a server would.
private final class World {
    private let dir: URL
    var devices: [Device] = []

    init(dir: URL, count: Int) throws {
        self.dir = dir
        for i in 0..<count {
            devices.append(try open(i, create: true))
        }
        for i in 0..<count {
            for j in (i + 1)..<count {
                try connect(i, j)
            }
        }
    }

    func open(_ i: Int, create: Bool = false) throws -> Device {
        let path = dir.appendingPathComponent("m\(i).db")
        let key = Data(repeating: UInt8(i + 1), count: 32)
        if create {
            return try Device.openOrCreate(path: path, storageKey: key, userId: "m\(i)", deviceId: 1, now: at(0))
        }
        return try Device.open(path: path, storageKey: key)
    }

    private func connect(_ i: Int, _ j: Int) throws {
        let (a, b) = (devices[i], devices[j])
        _ = try a.startSession(bundle: b.prekeyBundle())
        let hello = try a.encrypt(peer: b.address(), plaintext: Data("hello".utf8))
        _ = try b.commit(pending: b.decrypt(sender: a.address(), ciphertext: hello))
        let back = try b.encrypt(peer: a.address(), plaintext: Data("hello back".utf8))
        _ = try a.commit(pending: a.decrypt(sender: b.address(), ciphertext: back))
    }

    subscript(i: Int) -> Device { devices[i] }

    func address(_ i: Int) -> Address { devices[i].address() }

    func index(_ address: Address) -> Int { devices.firstIndex { $0.address() == address }! }

    /// Every member creates the group with the others (the app tells each of its devices).
    func create(_ group: Data, _ members: [Int]) throws {
        for i in members {
            try devices[i].createGroup(groupId: group, members: members.filter { $0 != i }.map(address))
        }
    }

    /// Decrypt, "store", commit: what an app does with each message.
    func receive(from: Int, to: Int, _ wire: Data) throws -> Received {
        let pending = try devices[to].decrypt(sender: address(from), ciphertext: wire)
        let (kind, text) = (pending.kind(), String(decoding: pending.plaintext(), as: UTF8.self))
        let answers = try devices[to].commit(pending: pending)
        return Received(kind: kind, text: text, answers: answers)
    }

    /// Delivers a send's distributions: control messages, answered by nothing.
    func distribute(from: Int, _ sent: GroupSend) throws {
        for outgoing in sent.distributions {
            XCTAssertEqual(try receive(from: from, to: index(outgoing.to), outgoing.message), Received(kind: .control, text: ""))
        }
    }

    @discardableResult
    func send(from: Int, _ group: Data, _ text: String) throws -> GroupSend {
        let sent = try devices[from].groupEncrypt(groupId: group, plaintext: Data(text.utf8))
        try distribute(from: from, sent)
        return sent
    }
}

/// The error a call threw, as a `SamizdatError` (nil if it threw another, or nothing).
private func samizdatError<T>(_ call: () throws -> T) -> SamizdatError? {
    do {
        _ = try call()
        return nil
    } catch {
        return error as? SamizdatError
    }
}

/// The stable code of the error a call threw (nil if it threw no `SamizdatError`, or nothing).
private func errorCode<T>(_ call: () throws -> T) -> String? {
    samizdatError(call)?.code()
}

/// The chain id and request a `MissingGroupKey` error carries (nil if the call threw anything else).
private func missingGroupKey<T>(_ call: () throws -> T) -> (chainId: Int64, request: Data?)? {
    guard let error = samizdatError(call), case let .MissingGroupKey(_, chainId, _) = error else {
        return nil
    }
    return (chainId, error.request())
}

final class GroupTests: XCTestCase {
    private var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(at: dir)
    }

    func testThreeMembersOutOfOrder() throws {
        let world = try World(dir: dir, count: 3)
        try world.create(group, [0, 1, 2])
        XCTAssertEqual(try world[0].groupMembers(groupId: group), [world.address(1), world.address(2)])
        var sent: [[Data]] = []
        for from in 0..<3 {
            let first = try world.send(from: from, group, "\(from):0")
            XCTAssertEqual(first.distributions.map { $0.to.userId }.sorted(), (0..<3).filter { $0 != from }.map { "m\($0)" })
            XCTAssertEqual(first.withoutSession, [])
            var messages = [first.message]
            for k in 1...2 {
                messages.append(try world.send(from: from, group, "\(from):\(k)").message)
            }
            sent.append(messages)
        }
        for (from, messages) in sent.enumerated() {
            for to in (0..<3).filter({ $0 != from }) {
                for k in [2, 0, 1] { // delivered third, first, second
                    let pending = try world[to].decrypt(sender: world.address(from), ciphertext: messages[k])
                    XCTAssertEqual(pending.kind(), .group)
                    XCTAssertEqual(pending.groupId(), group)
                    XCTAssertEqual(pending.plaintext(), Data("\(from):\(k)".utf8))
                    XCTAssertEqual(pending.sender(), world.address(from))
                    XCTAssertNil(pending.senderIdentity(), "a group message has no session of its own")
                    XCTAssertEqual(try world[to].commit(pending: pending), [])
                }
                XCTAssertEqual(errorCode { try world[to].decrypt(sender: world.address(from), ciphertext: messages[0]) }, "duplicate")
            }
        }
    }

    func testDistributionsAreNeverSentTwice() throws {
        let world = try World(dir: dir, count: 3)
        try world.create(group, [0, 1])
        XCTAssertEqual(try world.send(from: 0, group, "one").distributions.map(\.to), [world.address(1)])
        // Members that have the chain never get it again, not even after a restart.
        XCTAssertEqual(try world.send(from: 0, group, "two").distributions, [])
        world.devices[0] = try world.open(0) // the old handle's last reference goes: its store is released
        XCTAssertEqual(try world.send(from: 0, group, "three").distributions, [])
        // An added member gets the chain once, from now on; the others get nothing.
        for i in 0...1 {
            try world[i].addGroupMembers(groupId: group, members: [world.address(2)])
        }
        try world[2].createGroup(groupId: group, members: [world.address(0), world.address(1)])
        let welcome = try world.send(from: 0, group, "welcome")
        XCTAssertEqual(welcome.distributions.map(\.to), [world.address(2)])
        XCTAssertEqual(try world.receive(from: 0, to: 2, welcome.message), Received(kind: .group, text: "welcome"))
        XCTAssertEqual(try world.receive(from: 0, to: 1, welcome.message), Received(kind: .group, text: "welcome"))
        XCTAssertEqual(try world.send(from: 0, group, "after").distributions, [])
    }

    func testARemovedMemberCannotReadNewMessages() throws {
        let world = try World(dir: dir, count: 3)
        try world.create(group, [0, 1, 2])
        let before = try world.send(from: 0, group, "before")
        for to in 1...2 {
            XCTAssertEqual(try world.receive(from: 0, to: to, before.message).text, "before")
        }
        for i in 0...1 {
            try world[i].removeGroupMembers(groupId: group, members: [world.address(2)])
        }
        XCTAssertEqual(try world[0].groupMembers(groupId: group), [world.address(1)])
        let after = try world.send(from: 0, group, "after")
        XCTAssertEqual(after.distributions.map(\.to), [world.address(1)], "a new chain, for member 1 only")
        XCTAssertEqual(try world.receive(from: 0, to: 1, after.message), Received(kind: .group, text: "after"))
        // The removed device lacks the new chain; its request goes unanswered.
        let missing = try XCTUnwrap(missingGroupKey { try world[2].decrypt(sender: world.address(0), ciphertext: after.message) })
        let request = try XCTUnwrap(missing.request)
        XCTAssertEqual(try world.receive(from: 2, to: 0, request), Received(kind: .control, text: ""))
        XCTAssertNotNil(missingGroupKey { try world[2].decrypt(sender: world.address(0), ciphertext: after.message) })
        // Its own messages are refused by the remaining members.
        let fromRemoved = try world[2].groupEncrypt(groupId: group, plaintext: Data("still here?".utf8))
        XCTAssertEqual(errorCode { try world[0].decrypt(sender: world.address(2), ciphertext: fromRemoved.message) }, "not_in_group")
        // The remaining members go on.
        let reply = try world.send(from: 1, group, "reply")
        XCTAssertEqual(reply.distributions.map(\.to), [world.address(0)])
        XCTAssertEqual(try world.receive(from: 1, to: 0, reply.message).text, "reply")
    }

    func testALostDistributionIsRecoveredByARequest() throws {
        let world = try World(dir: dir, count: 3)
        try world.create(group, [0, 1, 2])
        let first = try world[0].groupEncrypt(groupId: group, plaintext: Data("first".utf8))
        // The distribution to member 1 is lost; member 2 gets its own.
        for outgoing in first.distributions where outgoing.to == world.address(2) {
            _ = try world.receive(from: 0, to: 2, outgoing.message)
        }
        let second = try world.send(from: 0, group, "second")
        let missing = try XCTUnwrap(missingGroupKey { try world[1].decrypt(sender: world.address(0), ciphertext: second.message) })
        // The same chain for the first message (asking once more is allowed, and bounded).
        let again = try XCTUnwrap(missingGroupKey { try world[1].decrypt(sender: world.address(0), ciphertext: first.message) })
        XCTAssertEqual(missing.chainId, again.chainId)
        // The sender's commit of the request returns the answer, for member 1.
        let received = try world.receive(from: 1, to: 0, XCTUnwrap(missing.request))
        XCTAssertEqual(received.kind, .control)
        XCTAssertEqual(received.answers.count, 1, "member 1 is a member: its request is answered, once")
        let answer = try XCTUnwrap(received.answers.first)
        XCTAssertEqual(answer.to, world.address(1))
        let pending = try world[1].decrypt(sender: world.address(0), ciphertext: answer.message)
        XCTAssertEqual(pending.kind(), .control)
        XCTAssertEqual(pending.groupId(), group)
        XCTAssertEqual(pending.plaintext(), Data())
        XCTAssertEqual(pending.senderIdentity(), world[0].identityKey())
        XCTAssertEqual(try world[1].commit(pending: pending), [])
        // The held message decrypts now, and so do the next ones, with no distribution.
        XCTAssertEqual(try world.receive(from: 0, to: 1, second.message), Received(kind: .group, text: "second"))
        let third = try world.send(from: 0, group, "third")
        XCTAssertEqual(third.distributions, [])
        XCTAssertEqual(try world.receive(from: 0, to: 1, third.message).text, "third")
    }

    func testAForgedGroupMessageIsRefused() throws {
        let world = try World(dir: dir, count: 3)
        try world.create(group, [0, 1, 2])
        let sent = try world.send(from: 0, group, "genuine")
        for at in [sent.message.count - 1, sent.message.count / 2] { // the signature; the body
            var forged = sent.message
            forged[forged.startIndex + at] ^= 1
            XCTAssertEqual(errorCode { try world[1].decrypt(sender: world.address(0), ciphertext: forged) }, "invalid_message")
        }
        // Attributed to another member: not a chain of that member's.
        XCTAssertNotNil(missingGroupKey { try world[1].decrypt(sender: world.address(2), ciphertext: sent.message) })
        // Nothing changed: the genuine message decrypts, once.
        XCTAssertEqual(try world.receive(from: 0, to: 1, sent.message), Received(kind: .group, text: "genuine"))
        XCTAssertEqual(errorCode { try world[1].decrypt(sender: world.address(0), ciphertext: sent.message) }, "duplicate")
    }

    func testGroupErrors() throws {
        let world = try World(dir: dir, count: 3)
        try world.create(group, [0, 1])
        let m0 = world[0]
        let sent = try world.send(from: 0, group, "hi")
        XCTAssertEqual(errorCode { try world[2].decrypt(sender: world.address(0), ciphertext: sent.message) }, "not_in_group")
        try world[2].createGroup(groupId: group, members: [world.address(1)])
        XCTAssertEqual(errorCode { try world[2].decrypt(sender: world.address(0), ciphertext: sent.message) }, "not_in_group")
        XCTAssertEqual(errorCode { try m0.createGroup(groupId: Data("g9".utf8), members: [m0.address()]) }, "invalid_argument")
        XCTAssertEqual(errorCode { try m0.createGroup(groupId: group, members: [world.address(1)]) }, "invalid_argument")
        XCTAssertEqual(errorCode { try m0.createGroup(groupId: Data(count: 65), members: []) }, "invalid_argument")
        let many = (0...5000).map { Address(userId: "u\($0)", deviceId: 1) }
        XCTAssertEqual(errorCode { try m0.createGroup(groupId: Data("big".utf8), members: many) }, "limit_exceeded")
        XCTAssertEqual(errorCode { try m0.groupEncrypt(groupId: Data("nope".utf8), plaintext: Data([1])) }, "not_in_group")
        // A member without a session is reported; it gets the chain once there is one.
        let stranger = Address(userId: "stranger", deviceId: 1)
        try m0.addGroupMembers(groupId: group, members: [stranger])
        XCTAssertEqual(try world.send(from: 0, group, "x").withoutSession, [stranger])
        // Leaving: the group is gone from this device.
        try m0.deleteGroup(groupId: group)
        XCTAssertEqual(errorCode { try m0.groupMembers(groupId: group) }, "not_in_group")
        XCTAssertEqual(errorCode { try m0.deleteGroup(groupId: group) }, "not_in_group")
    }

    func testABatchLeavesControlMessagesForDecrypt() throws {
        let world = try World(dir: dir, count: 2)
        try world.create(group, [0, 1])
        let sent = try world[0].groupEncrypt(groupId: group, plaintext: Data("x".utf8))
        let direct = try world[0].encrypt(peer: world.address(1), plaintext: Data("direct".utf8))
        let sender = world.address(0)
        let batch = try world[1].decryptBatch(messages: [
            IncomingMessage(sender: sender, ciphertext: sent.distributions[0].message),
            IncomingMessage(sender: sender, ciphertext: direct),
        ])
        let results = batch.results()
        XCTAssertEqual(results[0].error?.code(), "stale_pending") // left for decrypt: decrypt it again, alone
        XCTAssertEqual(results[1].plaintext, Data("direct".utf8))
        try world[1].commitBatch(batch: batch)
        // Not consumed: it decrypts alone, then the group message does.
        XCTAssertEqual(try world.receive(from: 0, to: 1, sent.distributions[0].message), Received(kind: .control, text: ""))
        XCTAssertEqual(try world.receive(from: 0, to: 1, sent.message), Received(kind: .group, text: "x"))
        // A direct message says so.
        let pending = try world[1].decrypt(sender: sender, ciphertext: world[0].encrypt(peer: world.address(1), plaintext: Data("d".utf8)))
        XCTAssertEqual(pending.kind(), .direct)
        XCTAssertNil(pending.groupId())
        XCTAssertEqual(pending.senderIdentity(), world[0].identityKey())
    }
}
