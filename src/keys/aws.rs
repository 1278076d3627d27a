//! The AWS KMS provider (being written).
