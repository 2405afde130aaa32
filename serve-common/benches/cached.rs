//! `bash bench/cached.sh`: a cached read against a plain field read, and a
//! setter plus re-read with 1 and with 100 unrelated cached properties
//! against a plain field write plus read, with criterion.
//!
//! `Wide`'s 100 properties were written out by a one-line generator: a
//! macro_rules loop cannot make the names.

mod common;

use std::hint::black_box;

use serve_common::prelude::*;

#[derive(Cached)]
struct Narrow {
    #[input]
    x: u64,
    base: u64,
    cache: Cache<Self>,
}

#[cached]
impl Narrow {
    #[cached]
    #[dependency(x)]
    fn dependent(&self) -> u64 {
        self.x * 2 + 1
    }

    #[cached]
    fn u0(&self) -> u64 {
        self.base
    }
}

#[derive(Cached)]
struct Wide {
    #[input]
    x: u64,
    base: u64,
    cache: Cache<Self>,
}

#[cached]
impl Wide {
    #[cached]
    #[dependency(x)]
    fn dependent(&self) -> u64 {
        self.x * 2 + 1
    }

    #[cached]
    fn u0(&self) -> u64 {
        self.base
    }

    #[cached]
    fn u1(&self) -> u64 {
        self.base + 1
    }

    #[cached]
    fn u2(&self) -> u64 {
        self.base + 2
    }

    #[cached]
    fn u3(&self) -> u64 {
        self.base + 3
    }

    #[cached]
    fn u4(&self) -> u64 {
        self.base + 4
    }

    #[cached]
    fn u5(&self) -> u64 {
        self.base + 5
    }

    #[cached]
    fn u6(&self) -> u64 {
        self.base + 6
    }

    #[cached]
    fn u7(&self) -> u64 {
        self.base + 7
    }

    #[cached]
    fn u8(&self) -> u64 {
        self.base + 8
    }

    #[cached]
    fn u9(&self) -> u64 {
        self.base + 9
    }

    #[cached]
    fn u10(&self) -> u64 {
        self.base + 10
    }

    #[cached]
    fn u11(&self) -> u64 {
        self.base + 11
    }

    #[cached]
    fn u12(&self) -> u64 {
        self.base + 12
    }

    #[cached]
    fn u13(&self) -> u64 {
        self.base + 13
    }

    #[cached]
    fn u14(&self) -> u64 {
        self.base + 14
    }

    #[cached]
    fn u15(&self) -> u64 {
        self.base + 15
    }

    #[cached]
    fn u16(&self) -> u64 {
        self.base + 16
    }

    #[cached]
    fn u17(&self) -> u64 {
        self.base + 17
    }

    #[cached]
    fn u18(&self) -> u64 {
        self.base + 18
    }

    #[cached]
    fn u19(&self) -> u64 {
        self.base + 19
    }

    #[cached]
    fn u20(&self) -> u64 {
        self.base + 20
    }

    #[cached]
    fn u21(&self) -> u64 {
        self.base + 21
    }

    #[cached]
    fn u22(&self) -> u64 {
        self.base + 22
    }

    #[cached]
    fn u23(&self) -> u64 {
        self.base + 23
    }

    #[cached]
    fn u24(&self) -> u64 {
        self.base + 24
    }

    #[cached]
    fn u25(&self) -> u64 {
        self.base + 25
    }

    #[cached]
    fn u26(&self) -> u64 {
        self.base + 26
    }

    #[cached]
    fn u27(&self) -> u64 {
        self.base + 27
    }

    #[cached]
    fn u28(&self) -> u64 {
        self.base + 28
    }

    #[cached]
    fn u29(&self) -> u64 {
        self.base + 29
    }

    #[cached]
    fn u30(&self) -> u64 {
        self.base + 30
    }

    #[cached]
    fn u31(&self) -> u64 {
        self.base + 31
    }

    #[cached]
    fn u32(&self) -> u64 {
        self.base + 32
    }

    #[cached]
    fn u33(&self) -> u64 {
        self.base + 33
    }

    #[cached]
    fn u34(&self) -> u64 {
        self.base + 34
    }

    #[cached]
    fn u35(&self) -> u64 {
        self.base + 35
    }

    #[cached]
    fn u36(&self) -> u64 {
        self.base + 36
    }

    #[cached]
    fn u37(&self) -> u64 {
        self.base + 37
    }

    #[cached]
    fn u38(&self) -> u64 {
        self.base + 38
    }

    #[cached]
    fn u39(&self) -> u64 {
        self.base + 39
    }

    #[cached]
    fn u40(&self) -> u64 {
        self.base + 40
    }

    #[cached]
    fn u41(&self) -> u64 {
        self.base + 41
    }

    #[cached]
    fn u42(&self) -> u64 {
        self.base + 42
    }

    #[cached]
    fn u43(&self) -> u64 {
        self.base + 43
    }

    #[cached]
    fn u44(&self) -> u64 {
        self.base + 44
    }

    #[cached]
    fn u45(&self) -> u64 {
        self.base + 45
    }

    #[cached]
    fn u46(&self) -> u64 {
        self.base + 46
    }

    #[cached]
    fn u47(&self) -> u64 {
        self.base + 47
    }

    #[cached]
    fn u48(&self) -> u64 {
        self.base + 48
    }

    #[cached]
    fn u49(&self) -> u64 {
        self.base + 49
    }

    #[cached]
    fn u50(&self) -> u64 {
        self.base + 50
    }

    #[cached]
    fn u51(&self) -> u64 {
        self.base + 51
    }

    #[cached]
    fn u52(&self) -> u64 {
        self.base + 52
    }

    #[cached]
    fn u53(&self) -> u64 {
        self.base + 53
    }

    #[cached]
    fn u54(&self) -> u64 {
        self.base + 54
    }

    #[cached]
    fn u55(&self) -> u64 {
        self.base + 55
    }

    #[cached]
    fn u56(&self) -> u64 {
        self.base + 56
    }

    #[cached]
    fn u57(&self) -> u64 {
        self.base + 57
    }

    #[cached]
    fn u58(&self) -> u64 {
        self.base + 58
    }

    #[cached]
    fn u59(&self) -> u64 {
        self.base + 59
    }

    #[cached]
    fn u60(&self) -> u64 {
        self.base + 60
    }

    #[cached]
    fn u61(&self) -> u64 {
        self.base + 61
    }

    #[cached]
    fn u62(&self) -> u64 {
        self.base + 62
    }

    #[cached]
    fn u63(&self) -> u64 {
        self.base + 63
    }

    #[cached]
    fn u64(&self) -> u64 {
        self.base + 64
    }

    #[cached]
    fn u65(&self) -> u64 {
        self.base + 65
    }

    #[cached]
    fn u66(&self) -> u64 {
        self.base + 66
    }

    #[cached]
    fn u67(&self) -> u64 {
        self.base + 67
    }

    #[cached]
    fn u68(&self) -> u64 {
        self.base + 68
    }

    #[cached]
    fn u69(&self) -> u64 {
        self.base + 69
    }

    #[cached]
    fn u70(&self) -> u64 {
        self.base + 70
    }

    #[cached]
    fn u71(&self) -> u64 {
        self.base + 71
    }

    #[cached]
    fn u72(&self) -> u64 {
        self.base + 72
    }

    #[cached]
    fn u73(&self) -> u64 {
        self.base + 73
    }

    #[cached]
    fn u74(&self) -> u64 {
        self.base + 74
    }

    #[cached]
    fn u75(&self) -> u64 {
        self.base + 75
    }

    #[cached]
    fn u76(&self) -> u64 {
        self.base + 76
    }

    #[cached]
    fn u77(&self) -> u64 {
        self.base + 77
    }

    #[cached]
    fn u78(&self) -> u64 {
        self.base + 78
    }

    #[cached]
    fn u79(&self) -> u64 {
        self.base + 79
    }

    #[cached]
    fn u80(&self) -> u64 {
        self.base + 80
    }

    #[cached]
    fn u81(&self) -> u64 {
        self.base + 81
    }

    #[cached]
    fn u82(&self) -> u64 {
        self.base + 82
    }

    #[cached]
    fn u83(&self) -> u64 {
        self.base + 83
    }

    #[cached]
    fn u84(&self) -> u64 {
        self.base + 84
    }

    #[cached]
    fn u85(&self) -> u64 {
        self.base + 85
    }

    #[cached]
    fn u86(&self) -> u64 {
        self.base + 86
    }

    #[cached]
    fn u87(&self) -> u64 {
        self.base + 87
    }

    #[cached]
    fn u88(&self) -> u64 {
        self.base + 88
    }

    #[cached]
    fn u89(&self) -> u64 {
        self.base + 89
    }

    #[cached]
    fn u90(&self) -> u64 {
        self.base + 90
    }

    #[cached]
    fn u91(&self) -> u64 {
        self.base + 91
    }

    #[cached]
    fn u92(&self) -> u64 {
        self.base + 92
    }

    #[cached]
    fn u93(&self) -> u64 {
        self.base + 93
    }

    #[cached]
    fn u94(&self) -> u64 {
        self.base + 94
    }

    #[cached]
    fn u95(&self) -> u64 {
        self.base + 95
    }

    #[cached]
    fn u96(&self) -> u64 {
        self.base + 96
    }

    #[cached]
    fn u97(&self) -> u64 {
        self.base + 97
    }

    #[cached]
    fn u98(&self) -> u64 {
        self.base + 98
    }

    #[cached]
    fn u99(&self) -> u64 {
        self.base + 99
    }
}

struct Plain {
    x: u64,
    value: u64,
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("criterion");
    let mut criterion = common::criterion(&out);

    let narrow = Narrow {
        x: 1,
        base: 0,
        cache: Cache::new(),
    };
    let plain = Plain { x: 1, value: 3 };
    assert_eq!(narrow.dependent(), &plain.value);
    criterion.bench_function("cached_hit", |b| {
        b.iter(|| black_box(black_box(&narrow).dependent()))
    });
    criterion.bench_function("plain_field_read", |b| {
        b.iter(|| black_box(&black_box(&plain).value))
    });

    let mut narrow = narrow;
    let mut wide = Wide {
        x: 1,
        base: 0,
        cache: Cache::new(),
    };
    // Every unrelated property cached, so an O(properties) invalidation
    // would show.
    let _ = (narrow.u0(), wide.u0(), wide.u99());
    let mut plain = plain;
    let mut n = 0_u64;
    criterion.bench_function("invalidate_1", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            narrow.set_x(black_box(n & 1));
            black_box(narrow.dependent());
        })
    });
    criterion.bench_function("invalidate_100", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            wide.set_x(black_box(n & 1));
            black_box(wide.dependent());
        })
    });
    criterion.bench_function("plain_write_read", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(&mut plain).x = black_box(n & 1);
            black_box(&black_box(&plain).x);
        })
    });
    criterion.final_summary();
    let median = |id| common::median_ns(&out, id);
    let (one, hundred) = (median("invalidate_1"), median("invalidate_100"));
    common::line(
        "cached_hit_ns",
        median("cached_hit"),
        median("plain_field_read"),
    );
    common::line("cached_invalidate_1_ns", one, median("plain_write_read"));
    common::line(
        "cached_invalidate_100_ns",
        hundred,
        median("plain_write_read"),
    );
    println!(
        "cached_invalidate_100_over_1: {:.3} baseline: - ratio: -",
        hundred / one
    );
}
