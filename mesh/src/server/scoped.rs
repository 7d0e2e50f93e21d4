//! A handler's future run within a task-local's scope, or as it is: what
//! the deadline and retry-count layers return, so that a call that needs no
//! scope costs no allocation and one that does costs none either.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::futures::TaskLocalFuture;

pin_project_lite::pin_project! {
    /// `F`, within a scope of `T` or not.
    #[project = MaybeScopedProjection]
    pub enum MaybeScoped<T: 'static, F> {
        /// No scope.
        Plain { #[pin] future: F },
        /// Within the scope.
        Scoped { #[pin] future: TaskLocalFuture<T, F> },
    }
}

impl<T: 'static, F: Future> Future for MaybeScoped<T, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            MaybeScopedProjection::Plain { future } => future.poll(cx),
            MaybeScopedProjection::Scoped { future } => future.poll(cx),
        }
    }
}
