import NIOCore

/// Runs Swift tasks' jobs on a NIO event loop: tasks that prefer it
/// (`withTaskExecutorPreference`) run on the thread that does their channel's I/O,
/// and hand work to it without waking another thread.
public final class EventLoopTaskExecutor: TaskExecutor {
    public let loop: any EventLoop

    public init(_ loop: any EventLoop) {
        self.loop = loop
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
