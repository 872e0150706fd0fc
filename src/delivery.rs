//! Result delivery (work in progress).
