//! An example service on the Weft mesh: customers' wishlists, kept in
//! PostgreSQL, with every product checked with Weft's inventory service
//! through the mesh. Binaries and tests start it with [`run`].

pub mod api;
pub mod config;
pub mod inventory;
pub mod server;
pub mod store;
pub mod validate;

pub use config::WishlistConfig;
pub use server::{DEFAULTS, NAME, migrations, run};

/// The wishlist contract (`wishlist.v1`) as Rust types and a tonic service.
pub mod pb {
    tonic::include_proto!("wishlist.v1");
}

/// The encoded `FileDescriptorSet` of the wishlist contract (and what it
/// imports): for reflection, and for callers' `MeshClient`, which learns
/// from it which methods are safe to retry.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/wishlist_descriptor.bin"));

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use weft_mesh::Idempotency;

    #[test]
    fn the_contract_marks_every_method_safe_to_retry() {
        // What a caller's MeshClient reads from this crate's descriptor set:
        // all three methods may be retried after a failure.
        let table = Idempotency::from_descriptor_sets(&[super::FILE_DESCRIPTOR_SET]).unwrap();
        for method in ["AddItem", "RemoveItem", "ListItems"] {
            assert!(
                table.is_safe(&format!("/wishlist.v1.WishlistService/{method}")),
                "{method}"
            );
        }
        // Inventory's contract is not in this set: its table is weft-proto's.
        assert!(!table.is_safe("/weft.inventory.v1.InventoryService/GetProduct"));
    }
}
