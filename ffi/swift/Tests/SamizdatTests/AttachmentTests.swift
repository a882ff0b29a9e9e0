// Attachments through the Swift bindings (PROTOCOL.md 22): the same scenarios as ffi/tests/kotlin
// (AttachmentTest.kt) and ffi/tests/python (test_attachments.py).
// Not compiled on the project's Linux machines (no Swift toolchain there): run
// with `swift test` on macOS as README.md's "Bindings" section describes.
import Foundation
import Samizdat
import XCTest

final class AttachmentTests: XCTestCase {
    private var dir: URL!
    private let chunk = 64 * 1024

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(at: dir)
    }

    private func file(_ name: String) -> URL {
        dir.appendingPathComponent(name)
    }

    func testAFileByPathAndARange() throws {
        let photo = Data((0..<(3 * chunk + 12345)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        try photo.write(to: file("photo.jpg"))
        let sent = try encryptAttachmentFile(inputPath: file("photo.jpg"), outputPath: file("blob"))
        XCTAssertEqual(sent.plaintextLen(), Int64(photo.count))
        let received = try Attachment.fromBytes(bytes: sent.toBytes())
        try decryptAttachmentFile(attachment: received, inputPath: file("blob"), outputPath: file("received.jpg"))
        XCTAssertEqual(try Data(contentsOf: file("received.jpg")), photo)
        let range = try readAttachmentRange(
            attachment: received, inputPath: file("blob"), offset: Int64(2 * chunk - 5), len: 10)
        XCTAssertEqual(range, photo.subdata(in: (2 * chunk - 5)..<(2 * chunk + 5)))
    }

    func testATamperedBlobLeavesNoOutputFile() throws {
        try Data(repeating: 7, count: 200_000).write(to: file("doc.pdf"))
        let sent = try encryptAttachmentFile(inputPath: file("doc.pdf"), outputPath: file("blob"))
        var bad = try Data(contentsOf: file("blob"))
        bad[100] ^= 1
        try bad.write(to: file("bad"))
        XCTAssertThrowsError(
            try decryptAttachmentFile(attachment: sent, inputPath: file("bad"), outputPath: file("out.pdf"))
        ) { error in
            guard case SamizdatError.InvalidMessage = error else { return XCTFail("\(error)") }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: file("out.pdf").path))
    }

    func testAPieceAtATime() throws {
        let data = Data((0..<(5 * chunk + 777)).map { UInt8(truncatingIfNeeded: $0) })
        let encryptor = AttachmentEncryptor()
        var blob = Data()
        var start = 0
        while start < data.count {
            let end = min(start + 10_000, data.count)
            blob.append(try encryptor.update(plaintext: data.subdata(in: start..<end)))
            start = end
        }
        let tail = try encryptor.finish()
        blob.append(tail.ciphertext)
        let decryptor = AttachmentDecryptor(attachment: tail.attachment)
        var out = Data()
        start = 0
        while start < blob.count {
            let end = min(start + 4096, blob.count)
            out.append(try decryptor.update(ciphertext: blob.subdata(in: start..<end)))
            start = end
        }
        try decryptor.finish()
        XCTAssertEqual(out, data)
    }
}
