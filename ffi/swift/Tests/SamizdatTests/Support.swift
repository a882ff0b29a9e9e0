// What the tests share. Not compiled on the project's Linux machines (no Swift toolchain there):
// run with `swift test` on macOS as README.md's "Bindings" section describes.
import Foundation

/// The tests' clock: `seconds` after the Unix epoch. The library takes every time as a `Date` and
/// keeps its whole seconds.
func at(_ seconds: TimeInterval) -> Date {
    Date(timeIntervalSince1970: seconds)
}
