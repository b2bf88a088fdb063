import CDiffusion
#if canImport(Glibc)
import Glibc
#endif
import DiffusionCore
import Synchronization

// The C boundary's plumbing: status conversion, error capture, handle registry.

extension diffusion_status {
    init(_ code: DiffusionError.Code) { self.init(rawValue: UInt32(code.rawValue)) }
}

/// Runs `body`, turning a thrown error into a status and the thread's last-error message.
func boundary(_ body: () throws -> Void) -> diffusion_status {
    if let mismatch = cdiffusion_cpu_mismatch() {
        cdiffusion_set_last_error(mismatch)
        return DIFFUSION_ERROR_UNSUPPORTED
    }
    // Samplers this call enters are left when it returns (a callback's nested calls leave theirs).
    let entered = SamplerHandle.enteredCount()
    defer { SamplerHandle.leave(downTo: entered) }
    do {
        try body()
        return DIFFUSION_OK
    } catch let e as DiffusionError {
        cdiffusion_set_last_error(e.message)
        return diffusion_status(e.code)
    } catch {
        cdiffusion_set_last_error("internal error: \(error)")
        return DIFFUSION_ERROR_INTERNAL
    }
}

func invalid(_ message: String) -> DiffusionError { DiffusionError(.invalidArgument, message) }

/// Live handles, so a NULL, foreign, freed or wrong-kind pointer is an error, not a crash.
final class HandleRegistry: Sendable {
    static let shared = HandleRegistry()
    private let live = Locked<[UnsafeMutableRawPointer: ObjectIdentifier]>([:])

    func register<T: AnyObject>(_ object: T) -> OpaquePointer {
        let raw = Unmanaged.passRetained(object).toOpaque()
        live.withLock { $0[raw] = ObjectIdentifier(T.self) }
        return OpaquePointer(raw)
    }

    func lookup<T: AnyObject>(_ handle: OpaquePointer?, as _: T.Type, _ what: String) throws -> T {
        guard let handle else { throw invalid("\(what) is NULL") }
        let raw = UnsafeMutableRawPointer(handle)
        // The strong reference is taken under the lock: a free on another thread (which removes
        // the handle under the lock, then drops the registry's reference) cannot free the object
        // between this check and the caller's use of it.
        let object = live.withLock { map -> T? in
            guard map[raw] == ObjectIdentifier(T.self) else { return nil }
            return Unmanaged<T>.fromOpaque(raw).takeUnretainedValue()
        }
        guard let object else { throw invalid("\(what) is not a live \(what) handle (freed already, or not one)") }
        return object
    }

    /// Removes and releases a handle; false if it was not live.
    func release<T: AnyObject>(_ handle: OpaquePointer?, as _: T.Type) -> Bool {
        guard let handle else { return false }
        let raw = UnsafeMutableRawPointer(handle)
        let found = live.withLock { map -> Bool in
            guard map[raw] == ObjectIdentifier(T.self) else { return false }
            map[raw] = nil
            return true
        }
        if found { Unmanaged<T>.fromOpaque(raw).release() }
        return found
    }
}

/// A loaded model behind a diffusion_model handle.
final class ModelHandle {
    let model: DiffusionModel
    let configJSON: UnsafeMutablePointer<CChar>
    init(_ model: DiffusionModel) {
        self.model = model
        configJSON = strdup(model.configJSON)
    }
    deinit { free(configJSON) }
}

/// A sampler behind a diffusion_sampler handle.
///
/// The header allows one thread at a time per sampler (cancel excepted). A call that uses a sampler
/// enters it: `owner` becomes the calling thread until the call returns, and a call from another
/// thread meanwhile gets INVALID_STATE instead of racing it. The owner's own nested calls (from a
/// progress or stage callback) pass; the sampler refuses what is unsafe in them by itself.
final class SamplerHandle {
    let sampler: Sampler
    let owner = Atomic<UInt>(0)
    init(_ sampler: Sampler) { self.sampler = sampler }

    /// Makes the calling thread the owner for the current API call, or throws if another thread is.
    func enter() throws {
        let me = UInt(pthread_self())
        if owner.compareExchange(expected: 0, desired: me, ordering: .acquiring).exchanged {
            Entered.ofThisThread.handles.append(self)
        } else if owner.load(ordering: .relaxed) != me {
            throw DiffusionError(.invalidState, "the sampler is in use by another thread (use a sampler from one thread at a time; only diffusion_sampler_cancel may come from any thread)")
        }
    }

    /// The samplers the calling thread's API calls in progress have entered.
    final class Entered {
        var handles: [SamplerHandle] = []
        static let key: pthread_key_t = {
            var k = pthread_key_t()
            pthread_key_create(&k) { p in if let p { Unmanaged<Entered>.fromOpaque(p).release() } }
            return k
        }()
        static var ofThisThread: Entered {
            if let p = pthread_getspecific(key) { return Unmanaged<Entered>.fromOpaque(p).takeUnretainedValue() }
            let e = Entered()
            pthread_setspecific(key, Unmanaged.passRetained(e).toOpaque())
            return e
        }
    }

    static func enteredCount() -> Int {
        guard let p = pthread_getspecific(Entered.key) else { return 0 }
        return Unmanaged<Entered>.fromOpaque(p).takeUnretainedValue().handles.count
    }

    static func leave(downTo count: Int) {
        guard let p = pthread_getspecific(Entered.key) else { return }
        let e = Unmanaged<Entered>.fromOpaque(p).takeUnretainedValue()
        while e.handles.count > count { e.handles.removeLast().owner.store(0, ordering: .releasing) }
    }
}

/// Copies a C string, refusing invalid UTF-8.
func string(_ p: UnsafePointer<CChar>, _ what: String) throws -> String {
    guard let s = String(validatingCString: p) else { throw invalid("\(what) is not valid UTF-8") }
    return s
}
