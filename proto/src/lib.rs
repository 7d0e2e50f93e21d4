//! Weft's Protobuf contracts as Rust types and tonic services, plus the encoded
//! file descriptor set that servers publish through reflection.

/// The encoded `FileDescriptorSet` of every Weft contract (and the well-known
/// types they import), for gRPC reflection and dynamic clients.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/weft_descriptor.bin"));

/// Money: amounts in minor units with an ISO 4217 currency code.
pub mod money {
    /// Version 1 of the money contract.
    pub mod v1 {
        tonic::include_proto!("weft.money.v1");
    }
}

/// The inventory service: products, stock and reservations.
pub mod inventory {
    /// Version 1 of the inventory contract.
    pub mod v1 {
        tonic::include_proto!("weft.inventory.v1");
    }
}

/// The payments service: accounts on a double-entry ledger.
pub mod payments {
    /// Version 1 of the payments contract.
    pub mod v1 {
        tonic::include_proto!("weft.payments.v1");
    }
}

/// The orders service: orders placed as a saga over inventory and payments.
pub mod orders {
    /// Version 1 of the orders contract.
    pub mod v1 {
        tonic::include_proto!("weft.orders.v1");
    }
}
