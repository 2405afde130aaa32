use serve_common::on_event;

#[on_event("job.*")]
fn handler<T: serde::de::DeserializeOwned>(payload: &T) {
    let _ = payload;
}

fn main() {}
