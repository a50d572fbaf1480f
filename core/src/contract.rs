//! The contract as data (issue 24): `make corpus` writes
//! `contract/corpus.jsonl` from the one model (`reference::Keyspace`: the
//! core's argument parser and the brute-force model), and every engine
//! replays it: the core here, the module and the twin on real servers and
//! the twin under a controlled clock (`tests/corpus.rs`), the client
//! packages' fallbacks and validators in their own suites. A test fails
//! when the checked-in corpus is not what the model says.
//!
//! A case is a sequence of calls on keys that start empty, each at its
//! time (ms), with the module's answer (a reply or an error's text), the
//! twin's where its own rules differ (Lua's doubles: numbers and sums above
//! 2^53), and the state of the keys it names afterwards. The format is
//! described in contract/README.md.

use crate::log::Millis;
use crate::reference::{Answer, KeyState, Keyspace};
use serde_json::{json, Value};

/// The cases' clock starts here (a realistic epoch time, so stored times
/// take their real width).
const EPOCH: Millis = 1_764_000_000_000;
const EXACT: u64 = 1 << 53;
const EXACT_TEXT: &str = "9007199254740992";

/// A case: its name, what it shows, and its calls (ms after EPOCH, words).
struct Case {
    name: String,
    about: String,
    steps: Vec<(Millis, Vec<String>)>,
}

fn case(name: &str, about: &str, steps: &[(Millis, &str)]) -> Case {
    Case {
        name: name.into(),
        about: about.into(),
        steps: steps
            .iter()
            .map(|&(at, line)| (at, line.split(' ').map(String::from).collect()))
            .collect(),
    }
}

/// A case whose words are given one by one (for words with spaces or odd
/// bytes).
fn case_words(name: &str, about: &str, steps: Vec<(Millis, Vec<String>)>) -> Case {
    Case {
        name: name.into(),
        about: about.into(),
        steps,
    }
}

/// The hand-written cases: every command and option, the bounds, every
/// error of README.md's tables (but a full log and WRONGTYPE, which no
/// engine without a server's keyspace can show).
fn written() -> Vec<Case> {
    let max_cost = "9223372036854775807";
    let over_cost = "9223372036854775808";
    let exact = EXACT_TEXT;
    let above_exact = "9007199254740993";
    let year = "31536000000";
    vec![
        case("check-one-limit", "five of five allowed, the sixth denied until the first leaves", &[
            (0, "RATELIMIT.CHECK k 60000 5"), (0, "RATELIMIT.CHECK k 60000 5"), (0, "RATELIMIT.CHECK k 60000 5"),
            (0, "RATELIMIT.CHECK k 60000 5"), (0, "RATELIMIT.CHECK k 60000 5"), (0, "RATELIMIT.CHECK k 60000 5"),
        ]),
        case("check-spread", "requests apart: the wait is until the oldest in the window leaves", &[
            (0, "RATELIMIT.CHECK k 1000 3"), (100, "RATELIMIT.CHECK k 1000 3"), (200, "RATELIMIT.CHECK k 1000 3"),
            (300, "RATELIMIT.CHECK k 1000 3"), (1000, "RATELIMIT.CHECK k 1000 3"), (1001, "RATELIMIT.PEEK k 1000 3"),
        ]),
        case("two-windows", "10 per second and 1,000 per hour: the tighter one decides", &[
            (0, "RATELIMIT.CHECK k 1000 2 3600000 3"), (1, "RATELIMIT.CHECK k 1000 2 3600000 3"),
            (2, "RATELIMIT.CHECK k 1000 2 3600000 3"), (1500, "RATELIMIT.CHECK k 1000 2 3600000 3"),
            (1600, "RATELIMIT.CHECK k 1000 2 3600000 3"),
        ]),
        case("eight-windows", "the most windows a call names, in any order", &[
            (0, "RATELIMIT.CHECK k 8 1 7 2 6 3 5 4 4 5 3 6 2 7 1 8"),
            (3, "RATELIMIT.CHECK k 8 1 7 2 6 3 5 4 4 5 3 6 2 7 1 8"),
            (9, "RATELIMIT.PEEK k 1 8 2 7 3 6 4 5 5 4 6 3 7 2 8 1"),
        ]),
        case("cost", "COST weighs a request; a request that does not fit records nothing", &[
            (0, "RATELIMIT.CHECK k 60000 10 COST 4"), (0, "RATELIMIT.CHECK k 60000 10 COST 4"),
            (0, "RATELIMIT.CHECK k 60000 10 COST 4"), (0, "RATELIMIT.CHECK k 60000 10 COST 2"),
            (0, "RATELIMIT.PEEK k 60000 10 cost 1"),
        ]),
        case("precision", "PRECISION p: requests in one p-ms cell share an entry, which takes the latest time", &[
            (10000, "RATELIMIT.CHECK k 1000 2 PRECISION 1000"), (10999, "RATELIMIT.CHECK k 1000 2 PRECISION 1000"),
            (11000, "RATELIMIT.CHECK k 1000 2 PRECISION 1000"), (11999, "RATELIMIT.CHECK k 1000 2 PRECISION 1000"),
            (12000, "RATELIMIT.CHECK k 1000 2 PRECISION 1000"),
        ]),
        case("peek", "PEEK answers as CHECK would and records nothing", &[
            (0, "RATELIMIT.PEEK k 60000 2"), (0, "RATELIMIT.CHECK k 60000 2"), (5, "RATELIMIT.PEEK k 60000 2"),
            (5, "RATELIMIT.PEEK k 60000 2 COST 2"), (6, "RATELIMIT.PEEK k 60000 2 BLOCK 1000"),
        ]),
        case("undo", "UNDO takes back the newest units; a key emptied goes", &[
            (0, "RATELIMIT.CHECK k 60000 10 COST 3"), (10, "RATELIMIT.CHECK k 60000 10 COST 2"),
            (20, "RATELIMIT.UNDO k"), (20, "RATELIMIT.UNDO k COST 2"), (20, "RATELIMIT.UNDO k COST 100"),
            (20, "RATELIMIT.UNDO k"), (20, "RATELIMIT.UNDO missing COST 5"),
        ]),
        case("window-widens", "a denial naming a longer window than the log's keeps it: the key lives longer", &[
            (0, "RATELIMIT.CHECK k 1000 1"), (10, "RATELIMIT.CHECK k 5000 1"), (2000, "RATELIMIT.PEEK k 5000 1"),
            (4000, "RATELIMIT.CHECK k 5000 1"),
        ]),
        case("expiry", "a key goes when its newest entry leaves its window", &[
            (0, "RATELIMIT.CHECK k 1000 5"), (500, "RATELIMIT.CHECK k 1000 5"), (1500, "RATELIMIT.PEEK k 1000 5"),
            (1501, "RATELIMIT.PEEK k 1000 5"),
        ]),
        case("clock-steps-back", "time never runs backwards for a key: a clock behind its newest entry reads as it", &[
            (1000, "RATELIMIT.CHECK k 1000 2"), (500, "RATELIMIT.CHECK k 1000 2"), (400, "RATELIMIT.CHECK k 1000 2"),
            (1999, "RATELIMIT.CHECK k 1000 2"),
        ]),
        case("block", "a denial with BLOCK blocks the key; calls on it are denied; the block neither grows nor restarts", &[
            (0, "RATELIMIT.CHECK k 60000 2 BLOCK 10000"), (0, "RATELIMIT.CHECK k 60000 2 BLOCK 10000"),
            (0, "RATELIMIT.CHECK k 60000 2 BLOCK 10000"), (100, "RATELIMIT.CHECK k 60000 2 BLOCK 10000"),
            (200, "RATELIMIT.PEEK k 60000 100"), (10000, "RATELIMIT.PEEK k 60000 100"),
            (10000, "RATELIMIT.CHECK k 60000 100"),
        ]),
        case("block-outlives-window", "a block longer than the window keeps the key until it ends", &[
            (0, "RATELIMIT.CHECK k 1000 1"), (1, "RATELIMIT.CHECK k 1000 1 BLOCK 5000"), (3000, "RATELIMIT.PEEK k 1000 1"),
            (5001, "RATELIMIT.PEEK k 1000 1"), (5002, "RATELIMIT.CHECK k 1000 1"),
        ]),
        case("unblock", "UNBLOCK lifts a block and keeps the history; a second UNBLOCK has nothing to lift", &[
            (0, "RATELIMIT.CHECK k 60000 1"), (1, "RATELIMIT.CHECK k 60000 1 BLOCK 3600000"),
            (2, "RATELIMIT.UNBLOCK k"), (3, "RATELIMIT.CHECK k 60000 1"), (4, "RATELIMIT.UNBLOCK k"),
            (5, "RATELIMIT.UNBLOCK missing"),
        ]),
        case("unblock-nothing-live", "UNBLOCK of a key whose entries all expired deletes it", &[
            (0, "RATELIMIT.CHECK k 1000 1"), (1, "RATELIMIT.CHECK k 1000 1 BLOCK 60000"), (2000, "RATELIMIT.UNBLOCK k"),
            (2001, "RATELIMIT.PEEK k 1000 1"),
        ]),
        case("refund-while-blocked", "a refund keeps the block; a refund that empties a blocked key keeps it, with no window", &[
            (0, "RATELIMIT.CHECK k 60000 2"), (0, "RATELIMIT.CHECK k 60000 2"), (1, "RATELIMIT.CHECK k 60000 2 BLOCK 5000"),
            (2, "RATELIMIT.UNDO k"), (3, "RATELIMIT.UNDO k"), (4, "RATELIMIT.UNDO k"), (5, "RATELIMIT.PEEK k 1000 5"),
            (5001, "RATELIMIT.PEEK k 1000 5"),
        ]),
        case("mcheck", "several keys at once: all or nothing; a denial names the keys that denied", &[
            (0, "RATELIMIT.MCHECK 3 user ip tenant 1 60000 2 1 60000 5 1 60000 100"),
            (1, "RATELIMIT.MCHECK 3 user ip tenant 1 60000 2 1 60000 5 1 60000 100"),
            (2, "RATELIMIT.MCHECK 3 user ip tenant 1 60000 2 1 60000 5 1 60000 100"),
            (3, "RATELIMIT.MPEEK 2 ip tenant 1 60000 5 1 60000 100"),
            (4, "RATELIMIT.MCHECK 2 ip tenant 1 60000 5 2 1000 1 60000 100 COST 2"),
        ]),
        case("mcheck-block", "an MCHECK denied with BLOCK blocks only the keys whose own limits denied", &[
            (0, "RATELIMIT.MCHECK 2 a b 1 60000 1 1 60000 10"), (1, "RATELIMIT.MCHECK 2 a b 1 60000 1 1 60000 10 BLOCK 30000"),
            (2, "RATELIMIT.MPEEK 2 a b 1 60000 5 1 60000 10"), (3, "RATELIMIT.MCHECK 2 b a 1 60000 10 1 60000 5"),
        ]),
        case("mundo", "MUNDO refunds each key", &[
            (0, "RATELIMIT.MCHECK 2 a b 1 60000 10 1 60000 10 COST 3"), (1, "RATELIMIT.MUNDO 2 a b COST 2"),
            (2, "RATELIMIT.MUNDO 3 a b c"), (3, "RATELIMIT.MUNDO 2 a b COST 5"),
        ]),
        case("bounds-windows", "windows of 1 ms and of 365 days", &[
            (0, "RATELIMIT.CHECK k 1 1"), (0, "RATELIMIT.CHECK k 1 1"), (1, "RATELIMIT.CHECK k 1 1"),
            (2, &format!("RATELIMIT.CHECK y {year} 2")), (3, &format!("RATELIMIT.CHECK y {year} 2")),
            (4, &format!("RATELIMIT.CHECK y {year} 2")),
        ]),
        case("bounds-exact", "max and COST at 2^53, the twin's largest", &[
            (0, &format!("RATELIMIT.CHECK k 60000 {exact} COST {exact}")), (1, &format!("RATELIMIT.PEEK k 60000 {exact}")),
            (2, "RATELIMIT.UNDO k COST 1"), (3, &format!("RATELIMIT.CHECK k 60000 {exact}")),
        ]),
        case("bounds-above-exact", "max or COST above 2^53: the module counts them, the twin refuses", &[
            (0, &format!("RATELIMIT.CHECK k 60000 {above_exact}")), (1, &format!("RATELIMIT.CHECK k 60000 {max_cost} COST {above_exact}")),
            (2, &format!("RATELIMIT.MCHECK 2 a b 1 60000 5 1 60000 {above_exact}")), (3, &format!("RATELIMIT.PEEK k 60000 {max_cost}")),
        ]),
        case("bounds-sum-above-exact", "a key's recorded cost past 2^53 (a unit its minute keeps, then 2^53 a 1 ms window allows): the module records it, the twin refuses", &[
            (0, "RATELIMIT.CHECK k 60000 10"), (3, &format!("RATELIMIT.CHECK k 1 {exact} COST {exact}")),
            (4, &format!("RATELIMIT.MCHECK 2 room k 1 1 {exact} 1 1 {exact} COST {exact}")),
        ]),
        case("bounds-63", "max and COST at 2^63 - 1, the module's largest; one more refused", &[
            (0, &format!("RATELIMIT.CHECK k 60000 {max_cost} COST {max_cost}")), (1, &format!("RATELIMIT.CHECK k 60000 {over_cost}")),
            (2, &format!("RATELIMIT.CHECK k 60000 5 COST {over_cost}")), (3, &format!("RATELIMIT.UNDO k COST {max_cost}")),
        ]),
        case("errors-arity", "the server's arity check", &[
            (0, "RATELIMIT.CHECK k"), (0, "RATELIMIT.CHECK k 1000"), (0, "RATELIMIT.PEEK k"), (0, "RATELIMIT.UNDO"),
            (0, "RATELIMIT.UNBLOCK"), (0, "RATELIMIT.UNBLOCK k extra"), (0, "RATELIMIT.MCHECK 1 k"),
            (0, "RATELIMIT.MCHECK 1 k 01"), (0, "RATELIMIT.MCHECK 2 a b 1 1000 5"), (0, "RATELIMIT.MPEEK 1 k 2 1000 5"),
        ]),
        case("errors-numbers", "numbers as Redis writes them: no sign, no leading zero, no space, in range", &[
            (0, "RATELIMIT.CHECK k 0 5"), (0, "RATELIMIT.CHECK k -1 5"), (0, "RATELIMIT.CHECK k +1000 5"),
            (0, "RATELIMIT.CHECK k 01000 5"), (0, "RATELIMIT.CHECK k 1e3 5"), (0, &format!("RATELIMIT.CHECK k 3{year} 5")),
            (0, "RATELIMIT.CHECK k 1000 0"), (0, "RATELIMIT.CHECK k 1000 five"), (0, "RATELIMIT.CHECK k 1000 -5"),
            (0, "RATELIMIT.CHECK k 1000 5 COST 0"), (0, "RATELIMIT.CHECK k 1000 5 COST -2"), (0, "RATELIMIT.CHECK k 1000 5 COST x"),
            (0, "RATELIMIT.CHECK k 1000 5 PRECISION 0"), (0, "RATELIMIT.CHECK k 1000 5 PRECISION 1001"),
            (0, "RATELIMIT.CHECK k 1000 5 3600000 9 PRECISION 2000"), (0, "RATELIMIT.CHECK k 1000 5 BLOCK 0"),
            (0, &format!("RATELIMIT.CHECK k 1000 5 BLOCK 3{year}")), (0, "RATELIMIT.UNDO k COST 0"),
        ]),
        case("errors-shape", "what a call's words must look like", &[
            (0, "RATELIMIT.CHECK k 1000 5 2000"), (0, "RATELIMIT.CHECK k 1000 5 1000 9"),
            (0, "RATELIMIT.CHECK k 1 1 2 2 3 3 4 4 5 5 6 6 7 7 8 8 9 9"), (0, "RATELIMIT.CHECK k 1000 5 COST 6"),
            (0, "RATELIMIT.CHECK k 1000 5 3600000 3 COST 4"), (0, "RATELIMIT.CHECK k 1000 5 COST"),
            (0, "RATELIMIT.CHECK k 1000 5 COST 1 COST 1"), (0, "RATELIMIT.CHECK k 1000 5 WEIGHT 2"),
            (0, "RATELIMIT.CHECK k 1000 5 BLOCK"), (0, "RATELIMIT.CHECK k 1000 5 BLOCK 5 block 6"),
            (0, "RATELIMIT.UNDO k PRECISION 5"), (0, "RATELIMIT.UNDO k COST"), (0, "RATELIMIT.MUNDO 1 k BLOCK 5"),
        ]),
        case("errors-several-keys", "the several-key calls' own errors, each naming its key", &[
            (0, "RATELIMIT.MCHECK 0 1 1000 5"), (0, "RATELIMIT.MCHECK 17 a b c d e f g h i j k l m n o p q 1 1000 5"),
            (0, "RATELIMIT.MCHECK x a 1 1000 5"), (0, "RATELIMIT.MCHECK 2 a a 1 1000 5 1 1000 5"),
            (0, "RATELIMIT.MCHECK 2 a b 1 1000 5 9 1000 5"), (0, "RATELIMIT.MCHECK 2 a b 1 1000 5 1 1000 0"),
            (0, "RATELIMIT.MCHECK 2 a b 1 1000 5 1 1000 3 COST 4"), (0, "RATELIMIT.MPEEK 1 a 0 1000 5"),
            (0, "RATELIMIT.MUNDO 0"), (0, "RATELIMIT.MUNDO 2 a a"),
        ]),
        case_words("errors-odd-bytes", "a NUL, CR or LF byte in a word an error shows is a space", vec![
            (0, words(&["RATELIMIT.CHECK", "k", "1000", "5", "X\0Y", "1"])),
            (0, words(&["RATELIMIT.CHECK", "k", "1000", "5", "X\r\nY", "1"])),
            (0, words(&["RATELIMIT.CHECK", "k", "10\u{0}00", "5"])),
            (0, words(&["RATELIMIT.MCHECK", "2", "a\0b", "a\0b", "1", "1000", "5", "1", "1000", "5"])),
        ]),
        case("charge-settle", "reserve an estimate with CHECK, then settle the actual cost: UNDO what was not used, CHARGE what was, recorded even past the limit", &[
            (0, "RATELIMIT.CHECK k 60000 10000 COST 4000"), (1, "RATELIMIT.UNDO k COST 1000"),
            (2, "RATELIMIT.CHECK k 60000 10000 COST 4000"), (3, "RATELIMIT.CHARGE k 60000 10000 COST 5000"),
            (4, "RATELIMIT.CHECK k 60000 10000"), (5, "RATELIMIT.PEEK k 60000 10000 COST 1"),
        ]),
        case("charge-drains", "over by a settlement: denied until the window drains enough, then the rest counts", &[
            (0, "RATELIMIT.CHECK k 1000 10 COST 8"), (100, "RATELIMIT.CHARGE k 1000 10 COST 5"),
            (200, "RATELIMIT.CHECK k 1000 10"), (999, "RATELIMIT.CHECK k 1000 10"), (1000, "RATELIMIT.CHECK k 1000 10"),
            (1001, "RATELIMIT.CHARGE k 1000 10"), (1100, "RATELIMIT.PEEK k 1000 10"),
        ]),
        case("charge-windows", "several windows: over is the most any is over, the wait until a request of 1 fits them all; the key keeps the longest window", &[
            (0, "RATELIMIT.CHARGE k 1000 5 60000 8 COST 7"), (1, "RATELIMIT.CHARGE k 60000 8"),
            (2, "RATELIMIT.CHECK k 1000 5 60000 8"), (3, "RATELIMIT.CHARGE k 1000 100"),
            (4, "RATELIMIT.PEEK k 60000 8"),
        ]),
        case("charge-precision", "PRECISION p: a charge joins its cell's entry, as a CHECK's units do", &[
            (10000, "RATELIMIT.CHARGE k 1000 2 COST 3 PRECISION 1000"), (10500, "RATELIMIT.CHARGE k 1000 2 PRECISION 1000"),
            (11000, "RATELIMIT.CHECK k 1000 2 PRECISION 1000"), (11500, "RATELIMIT.CHECK k 1000 2 PRECISION 1000"),
        ]),
        case("charge-blocked", "a charge is recorded on a blocked key, which stays blocked; it never starts a block", &[
            (0, "RATELIMIT.CHECK k 60000 1"), (1, "RATELIMIT.CHECK k 60000 1 BLOCK 10000"),
            (2, "RATELIMIT.CHARGE k 60000 1 COST 2"), (3, "RATELIMIT.PEEK k 60000 5"),
            (4, "RATELIMIT.CHARGE j 60000 1 COST 5"), (5, "RATELIMIT.PEEK j 60000 5"),
        ]),
        case("mcharge", "MCHARGE: CHARGE on every key, each with its own limits; the positions of the keys now over", &[
            (0, "RATELIMIT.MCHECK 2 user tenant 1 60000 5 1 60000 100 COST 3"),
            (1, "RATELIMIT.MCHARGE 2 user tenant 1 60000 5 1 60000 100 COST 4"),
            (2, "RATELIMIT.MCHARGE 3 user ip tenant 1 60000 5 1 1000 3 1 60000 100"),
            (3, "RATELIMIT.MCHECK 2 tenant user 1 60000 100 1 60000 5"),
            (4, "RATELIMIT.MCHARGE 1 ip 2 1000 3 60000 50 COST 2"),
        ]),
        case("charge-types", "CHARGE and MCHARGE on a token bucket's key: WRONGTYPE, and no key changes", &[
            (0, "RATELIMIT.GCRA g 1 1 60"), (1, "RATELIMIT.CHARGE g 60000 5"),
            (2, "RATELIMIT.MCHARGE 2 w g 1 60000 5 1 60000 5"), (3, "RATELIMIT.CHARGE w 60000 5"),
        ]),
        case("charge-bounds-63", "a charge that would make a key hold more than 2^63 - 1 is refused whole; COST at 2^63 - 1 is not", &[
            (0, &format!("RATELIMIT.CHARGE k 60000 5 COST {max_cost}")), (1, "RATELIMIT.CHARGE k 60000 5"),
            (2, "RATELIMIT.CHARGE k 1000 5"), (3, "RATELIMIT.MCHARGE 2 a k 1 60000 5 1 60000 5"),
            (4, "RATELIMIT.UNDO k COST 1"), (5, "RATELIMIT.CHARGE k 60000 5"),
            (6, &format!("RATELIMIT.CHARGE a 60000 5 COST {over_cost}")),
        ]),
        case("charge-above-exact", "a charge past 2^53 (its COST, or what the key would hold): the module records it, the twin refuses", &[
            (0, &format!("RATELIMIT.CHARGE k 60000 10 COST {above_exact}")), (1, &format!("RATELIMIT.CHARGE j 60000 10 COST {exact}")),
            (2, "RATELIMIT.CHARGE j 60000 10"), (3, "RATELIMIT.MCHARGE 2 a j 1 60000 10 1 60000 10"),
            (4, &format!("RATELIMIT.CHARGE a 60000 {above_exact}")),
        ]),
        case("errors-charge", "CHARGE's and MCHARGE's errors: CHECK's, but COST may be above max, and BLOCK is no option", &[
            (0, "RATELIMIT.CHARGE k"), (0, "RATELIMIT.CHARGE k 1000"), (0, "RATELIMIT.MCHARGE 1 k"),
            (0, "RATELIMIT.MCHARGE 0 1 1000 5"), (0, "RATELIMIT.CHARGE k 0 5"), (0, "RATELIMIT.CHARGE k 1000 0"),
            (0, "RATELIMIT.CHARGE k 1000 5 COST 0"), (0, "RATELIMIT.CHARGE k 1000 5 COST -1"),
            (0, "RATELIMIT.CHARGE k 1000 5 COST"), (0, "RATELIMIT.CHARGE k 1000 5 COST 1 cost 2"),
            (0, "RATELIMIT.CHARGE k 1000 5 BLOCK 1000"), (0, "RATELIMIT.CHARGE k 1000 5 PRECISION 2000"),
            (0, "RATELIMIT.CHARGE k 1000 5 1000 6"), (0, "RATELIMIT.CHARGE k 1000 5 2000"),
            (0, "RATELIMIT.CHARGE k 1 1 2 2 3 3 4 4 5 5 6 6 7 7 8 8 9 9"),
            (0, "RATELIMIT.MCHARGE 2 a a 1 1000 5 1 1000 5"), (0, "RATELIMIT.MCHARGE 2 a b 1 1000 5 9 1000 5"),
            (0, "RATELIMIT.MCHARGE 2 a b 1 1000 5 1 1000 0"), (0, "RATELIMIT.MCHARGE 1 a 1 1000 5 BLOCK 5"),
            (0, "RATELIMIT.MCHARGE 2 a b 1 1000 5 1 100 5 PRECISION 500"),
            (0, "RATELIMIT.CHARGE k 1000 5 COST 6"),
        ]),
        gcra_case("gcra-burst", "30 per minute in bursts of 16: 16 at once, then one every 2 s", &[
            (0, "15 30 60"), (0, "15 30 60"), (0, "15 30 60"), (0, "15 30 60"), (0, "15 30 60 TOKENS 12"),
            (0, "15 30 60"), (1999, "15 30 60"), (2000, "15 30 60"), (2000, "15 30 60 MS"), (5000, "15 30 60 TOKENS 0 MS"),
        ]),
        gcra_case("gcra-drip", "a bucket of 3 drained at one token a second: each token back when it has drained", &[
            (0, "2 1 1"), (0, "2 1 1"), (0, "2 1 1"), (0, "2 1 1"), (999, "2 1 1 MS"), (1000, "2 1 1 MS"),
            (1000, "2 1 1 MS"), (2500, "2 1 1 MS"), (6000, "2 1 1 TOKENS 0 MS"),
        ]),
        gcra_case("gcra-tokens", "TOKENS n weighs a request; TOKENS 0 asks and charges nothing; more than a bucket never fits", &[
            (0, "4 10 1 TOKENS 0"), (0, "4 10 1 TOKENS 3"), (0, "4 10 1 TOKENS 3 MS"), (0, "4 10 1 TOKENS 6 MS"),
            (0, "4 10 1 TOKENS 2 MS"), (100, "4 10 1 TOKENS 1 MS"), (700, "4 10 1 TOKENS 0 MS"),
        ]),
        gcra_case("gcra-rounding", "waits in seconds as redis-cell rounds them (whole seconds, one more for a millisecond left), or exact with MS", &[
            (0, "0 3 10"), (0, "0 3 10"), (0, "0 3 10 MS"), (1, "0 3 10"), (1, "0 3 10 MS"), (3333, "0 3 10 MS"),
            (3334, "0 3 10 MS"), (3334, "0 3 10"),
        ]),
        gcra_case("gcra-fast", "rates above 1,000 a second and periods below one: exact, no rounding (redis-cell #50, #80)", &[
            (0, "9 5000 1 MS"), (0, "9 5000 1 TOKENS 9 MS"), (0, "9 5000 1 MS"), (1, "9 5000 1 MS"), (1, "9 5000 1 TOKENS 5 MS"),
            (3, "2 1 0.5 MS"), (3, "2 1 0.5 TOKENS 3 MS"), (4, "2 1 0.5 MS"), (504, "2 1 0.001 MS"), (504, "0 1 0.001 MS"),
        ]),
        gcra_case("gcra-changed-limit", "a call under another limit keeps the tokens the key holds (whole ones under another period), even above a smaller burst, drained at the call's rate (redis-cell #54)", &[
            (0, "9 10 60 TOKENS 8 MS"), (0, "9 20 60 MS"), (0, "9 10 30 MS"), (0, "3 10 60 MS"), (6000, "3 10 60 MS"),
            (6000, "9 60 60 TOKENS 0 MS"),
        ]),
        gcra_case("gcra-clock-steps-back", "a clock behind the key's last charge reads as it: a step back frees nothing", &[
            (5000, "1 1 1 MS"), (5000, "1 1 1 MS"), (4000, "1 1 1 MS"), (4500, "1 1 1 TOKENS 0 MS"), (6000, "1 1 1 MS"),
        ]),
        gcra_case("gcra-expiry", "the key expires when its bucket is empty again; a new bucket starts full", &[
            (0, "4 1 1 TOKENS 3 MS"), (2999, "4 1 1 TOKENS 0 MS"), (3000, "4 1 1 TOKENS 0 MS"), (3001, "4 1 1 TOKENS 0 MS"),
            (3001, "4 1 1 TOKENS 5 MS"),
        ]),
        gcra_case("gcra-bounds", "the largest numbers: exact up to 9e15 units", &[
            (0, "8999999999999999 9000000000000000 0.001 MS"),
            (0, "8999999999999999 9000000000000000 0.001 TOKENS 9000000000000000 MS"),
            (0, "0 9000000000000000 7776000 MS"), (0, "0 9000000000000000 7776000 MS"),
            (0, "1157 1 7776000 TOKENS 1158 MS"), (1, "1157 1 7776000 MS"),
        ]),
        gcra_case("gcra-at-once", "a burst at one moment: the bucket's 16 tokens, weighed, asked, then limited", &[
            (0, "15 30 60"), (0, "15 30 60 TOKENS 10"), (0, "15 30 60 TOKENS 0"), (0, "15 30 60 TOKENS 6 MS"),
            (0, "15 30 60 TOKENS 5"), (0, "15 30 60"), (0, "15 30 60 MS"), (0, "15 30 60 TOKENS 17 MS"),
            (0, "15 30 60 TOKENS 0 MS"),
        ]),
        gcra_case("gcra-settle", "reserve an estimate, then CHARGE the rest past full: never limited, a debt the next requests wait out as it drains", &[
            (0, "3 1 1 TOKENS 2 MS"), (0, "3 1 1 TOKENS 5 CHARGE MS"), (1000, "3 1 1 MS"), (3999, "3 1 1 MS"),
            (4000, "3 1 1 MS"), (4000, "3 1 1 TOKENS 0 CHARGE MS"), (5000, "3 1 1 TOKENS 0 CHARGE"),
            (5000, "3 1 1 CHARGE"),
        ]),
        gcra_case("gcra-refund", "REFUND takes back tokens from what the bucket holds now; a bucket left empty is deleted", &[
            (0, "4 1 60 TOKENS 4"), (0, "4 1 60 TOKENS 3 REFUND"), (0, "4 1 60 TOKENS 2 CHARGE MS"),
            (30000, "4 1 60 TOKENS 1 REFUND MS"), (30000, "4 1 60 TOKENS 0 REFUND MS"), (30000, "4 1 60 TOKENS 10 REFUND MS"),
            (30000, "4 1 60 REFUND"), (30000, "4 1 60 TOKENS 0 MS"),
        ]),
        gcra_case("gcra-settle-at-once", "a reservation settled both ways at one moment: CHARGE past full, REFUND back under, REFUND to empty", &[
            (0, "4 1 60 TOKENS 3"), (0, "4 1 60 TOKENS 4 CHARGE"), (0, "4 1 60"), (0, "4 1 60 TOKENS 0 REFUND"),
            (0, "4 1 60 TOKENS 5 REFUND"), (0, "4 1 60 TOKENS 2 MS"), (0, "4 1 60 TOKENS 9 REFUND"),
            (0, "4 1 60 TOKENS 2 refund"), (0, "4 1 60 TOKENS 0 CHARGE"),
        ]),
        gcra_case("gcra-debt-changed-limit", "a debt persists under another limit: the same period keeps its units even above a smaller burst, another counts its tokens whole", &[
            (0, "3 1 1 TOKENS 6 CHARGE MS"), (0, "1 1 1 MS"), (0, "9 1 1 MS"), (1000, "3 2 1 MS"),
            (1000, "3 1 0.5 MS"), (1000, "3 1 0.5 TOKENS 0 CHARGE MS"), (1000, "0 1 2 TOKENS 1 REFUND MS"),
            (2000, "0 1 2 TOKENS 0 MS"),
        ]),
        case("gcra-settle-errors", "CHARGE and REFUND: one or the other; a charge past the exact bound is refused whole; WRONGTYPE on a log", &[
            (0, "RATELIMIT.GCRA k 1 1 1 CHARGE REFUND"), (0, "RATELIMIT.GCRA k 1 1 1 TOKENS 2 refund charge MS"),
            (0, "RATELIMIT.GCRA k 1 1 1 CHARGE CHARGE"), (0, "RATELIMIT.GCRA k 1 1 1 CHARGE x"),
            (0, "RATELIMIT.GCRA k 0 1 7776000 TOKENS 1157407 CHARGE"), (0, "RATELIMIT.GCRA k 0 1 7776000 CHARGE"),
            (0, "RATELIMIT.GCRA k 0 1 7776000 TOKENS 0 CHARGE"), (0, "RATELIMIT.GCRA k 0 1 0.001 TOKENS 0 MS"),
            (0, "RATELIMIT.GCRA j 0 1 1 TOKENS 9000000000000000 CHARGE"),
            (0, "RATELIMIT.GCRA j 0 9000000000000000 0.001 TOKENS 9000000000000000 CHARGE MS"),
            (0, "RATELIMIT.GCRA j 0 9000000000000000 0.001 CHARGE"),
            (0, "RATELIMIT.CHECK w 60000 5"), (0, "RATELIMIT.GCRA w 1 1 1 CHARGE"), (0, "RATELIMIT.GCRA w 1 1 1 REFUND"),
        ]),
        case("gcra-types", "a token bucket and a sliding window are keys of two types: each command refuses the other's", &[
            (0, "RATELIMIT.CHECK w 60000 5"), (0, "RATELIMIT.GCRA w 1 1 60"), (0, "RATELIMIT.GCRA g 1 1 60"),
            (0, "RATELIMIT.CHECK g 60000 5"), (0, "RATELIMIT.PEEK g 60000 5"), (0, "RATELIMIT.UNDO g"),
            (0, "RATELIMIT.UNBLOCK g"), (0, "RATELIMIT.MCHECK 2 w g 1 60000 5 1 60000 5"),
            (0, "RATELIMIT.MPEEK 2 g w 1 60000 5 1 60000 5"), (0, "RATELIMIT.MUNDO 2 w g"),
            (0, "RATELIMIT.GCRA g 1 1 60 TOKENS 0"), (0, "RATELIMIT.GCRA g x 1 60"), (0, "RATELIMIT.CHECK g 0 5"),
        ]),
        case("gcra-type-after-expiry", "once a key expires, its name may hold the other type", &[
            (0, "RATELIMIT.GCRA k 0 1 1"), (1000, "RATELIMIT.CHECK k 1000 5"), (2001, "RATELIMIT.GCRA k 0 1 1 MS"),
            (2001, "RATELIMIT.GCRA k 0 1 1 MS"),
        ]),
        case("gcra-errors", "GCRA's arguments: numbers as Redis writes them, periods in whole milliseconds, the bounds", &[
            (0, "RATELIMIT.GCRA k 1 1"), (0, "RATELIMIT.GCRA k -1 1 1"), (0, "RATELIMIT.GCRA k 01 1 1"),
            (0, "RATELIMIT.GCRA k 9000000000000000 1 1"), (0, "RATELIMIT.GCRA k 1 0 1"), (0, "RATELIMIT.GCRA k 1 9000000000000001 1"),
            (0, "RATELIMIT.GCRA k 1 1 0"), (0, "RATELIMIT.GCRA k 1 1 0.0001"), (0, "RATELIMIT.GCRA k 1 1 .5"),
            (0, "RATELIMIT.GCRA k 1 1 1."), (0, "RATELIMIT.GCRA k 1 1 1e3"), (0, "RATELIMIT.GCRA k 1 1 +1"),
            (0, "RATELIMIT.GCRA k 1 1 00.5"), (0, "RATELIMIT.GCRA k 1 1 7776000.001"), (0, "RATELIMIT.GCRA k 1 1 7776001"),
            (0, "RATELIMIT.GCRA k 1 1 1 TOKENS"), (0, "RATELIMIT.GCRA k 1 1 1 TOKENS -1"), (0, "RATELIMIT.GCRA k 1 1 1 TOKENS 9000000000000001"),
            (0, "RATELIMIT.GCRA k 1 1 1 TOKENS 1 TOKENS 1"), (0, "RATELIMIT.GCRA k 1 1 1 MS MS"), (0, "RATELIMIT.GCRA k 1 1 1 COST 1"),
            (0, "RATELIMIT.GCRA k 1 1 1 ms tokens 2"), (0, "RATELIMIT.GCRA k 4499999999999999 1 2"),
            (0, "RATELIMIT.GCRA k 4499999999999999 1 1"), (0, "RATELIMIT.GCRA k 1 1 1"),
        ]),
    ]
}

/// A case of RATELIMIT.GCRA calls on key `g`, each step's words after the
/// key (`max_burst count period [TOKENS n] [MS]`).
fn gcra_case(name: &str, about: &str, steps: &[(Millis, &str)]) -> Case {
    let calls: Vec<(Millis, String)> = steps
        .iter()
        .map(|&(at, rest)| (at, format!("RATELIMIT.GCRA g {rest}")))
        .collect();
    let steps: Vec<(Millis, &str)> = calls.iter().map(|(at, c)| (*at, c.as_str())).collect();
    case(name, about, &steps)
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|w| w.to_string()).collect()
}

/// A small xorshift: the random cases are the same on every run.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// What random calls name: their windows, their blocks, and whether they
/// use PRECISION.
struct Shape {
    windows: &'static [&'static str],
    blocks: &'static [&'static str],
    precision: bool,
    /// Whether CHARGE and MCHARGE are among the calls (a few in 22).
    charges: bool,
}

/// Windows from 20 ms to a minute, blocks from 50 ms: the clock's moves
/// decide.
const BRISK: Shape = Shape {
    windows: &["20", "100", "250", "1000", "60000"],
    blocks: &["50", "500", "5000"],
    precision: true,
    charges: false,
};

/// BRISK, with settlements (CHARGE, MCHARGE) among the calls.
const BRISK_CHARGING: Shape = Shape {
    charges: true,
    ..BRISK
};

/// Windows and blocks of a second or more and no PRECISION, with every
/// call at once: a case a real server can replay (`pinnable`).
const STILL: Shape = Shape {
    windows: &["1000", "5000", "60000", "3600000"],
    blocks: &["1000", "60000"],
    precision: false,
    charges: false,
};

/// STILL, with settlements among the calls.
const STILL_CHARGING: Shape = Shape {
    charges: true,
    ..STILL
};

/// One random call's words: mostly well-formed CHECKs and PEEKs on a few
/// keys, with several limits, COST, PRECISION and BLOCK, and UNDO,
/// UNBLOCK and the several-key calls, and in a shape with `charges`
/// CHARGE and MCHARGE; now and then a malformed one.
fn random_call(random: &mut Random, shape: &Shape) -> Vec<String> {
    let key = |random: &mut Random| random.pick(&["a", "b", "c"]).to_string();
    let limits = |random: &mut Random| -> Vec<String> {
        let mut windows = vec![];
        for _ in 0..1 + random.below(3) {
            let window = random.pick(shape.windows);
            if !windows.contains(&window) {
                windows.push(window);
            }
        }
        windows
            .into_iter()
            .flat_map(|w| {
                [
                    w.to_string(),
                    random
                        .pick(&["1", "2", "3", "5", "8", "13", "9007199254740992"])
                        .to_string(),
                ]
            })
            .collect()
    };
    let options = |random: &mut Random, limits: &[String]| -> Vec<String> {
        let mut options = vec![];
        let smallest_max: u64 = limits
            .iter()
            .skip(1)
            .step_by(2)
            .filter_map(|m| m.parse().ok())
            .min()
            .unwrap_or(1);
        if random.below(3) == 0 {
            options.extend([
                "COST".into(),
                (1 + random.below(smallest_max.min(4))).to_string(),
            ]);
        }
        let shortest: u64 = limits
            .iter()
            .step_by(2)
            .filter_map(|w| w.parse().ok())
            .min()
            .unwrap_or(1);
        if shape.precision && random.below(4) == 0 {
            options.extend([
                "PRECISION".into(),
                (1 + random.below(shortest.min(50))).to_string(),
            ]);
        }
        if random.below(5) == 0 {
            options.extend(["BLOCK".into(), random.pick(shape.blocks).to_string()]);
        }
        options
    };
    // CHARGE's options: COST (any, up to 20) and PRECISION, never BLOCK.
    let charge_options = |random: &mut Random, limits: &[String]| -> Vec<String> {
        let mut options = vec![];
        if random.below(4) != 0 {
            options.extend(["COST".into(), (1 + random.below(20)).to_string()]);
        }
        let shortest: u64 = limits
            .iter()
            .step_by(2)
            .filter_map(|w| w.parse().ok())
            .min()
            .unwrap_or(1);
        if shape.precision && random.below(4) == 0 {
            options.extend([
                "PRECISION".into(),
                (1 + random.below(shortest.min(50))).to_string(),
            ]);
        }
        options
    };
    let mut call = match random.below(if shape.charges { 22 } else { 20 }) {
        0..=8 => {
            let limits = limits(random);
            let options = options(random, &limits);
            [
                vec!["RATELIMIT.CHECK".to_string(), key(random)],
                limits,
                options,
            ]
            .concat()
        }
        9..=11 => {
            let limits = limits(random);
            let options = options(random, &limits);
            [
                vec!["RATELIMIT.PEEK".to_string(), key(random)],
                limits,
                options,
            ]
            .concat()
        }
        12 | 13 => {
            let cost = random.pick(&["1", "2", "5"]);
            vec![
                "RATELIMIT.UNDO".into(),
                key(random),
                "COST".into(),
                cost.into(),
            ]
        }
        14 => vec!["RATELIMIT.UNBLOCK".into(), key(random)],
        15..=17 => {
            let command = if random.below(4) == 0 {
                "RATELIMIT.MPEEK"
            } else {
                "RATELIMIT.MCHECK"
            };
            let keys: Vec<&str> = match random.below(3) {
                0 => vec!["a", "b"],
                1 => vec!["c", "a"],
                _ => vec!["b", "c", "a"],
            };
            let mut call: Vec<String> = vec![command.into(), keys.len().to_string()];
            call.extend(keys.iter().map(|k| k.to_string()));
            let mut all = vec![];
            for _ in &keys {
                let limits = limits(random);
                call.push((limits.len() / 2).to_string());
                call.extend(limits.iter().cloned());
                all.extend(limits);
            }
            call.extend(options(random, &all));
            call
        }
        18 => vec!["RATELIMIT.MUNDO".into(), "2".into(), "b".into(), "a".into()],
        // Settlements: a cost from 1 to past most maxes.
        20 => {
            let limits = limits(random);
            [
                vec!["RATELIMIT.CHARGE".to_string(), key(random)],
                limits.clone(),
                charge_options(random, &limits),
            ]
            .concat()
        }
        21 => {
            let keys: Vec<&str> = match random.below(2) {
                0 => vec!["a", "c"],
                _ => vec!["c", "b", "a"],
            };
            let mut call: Vec<String> = vec!["RATELIMIT.MCHARGE".into(), keys.len().to_string()];
            call.extend(keys.iter().map(|k| k.to_string()));
            let mut all = vec![];
            for _ in &keys {
                let limits = limits(random);
                call.push((limits.len() / 2).to_string());
                call.extend(limits.iter().cloned());
                all.extend(limits);
            }
            call.extend(charge_options(random, &all));
            call
        }
        _ => vec![
            "RATELIMIT.CHECK".into(),
            key(random),
            random.pick(&["1000", "0", "x"]).into(),
            random.pick(&["5", "0", "-1"]).into(),
        ],
    };
    // Now and then a word changed into one the parser refuses.
    if random.below(40) == 0 {
        let at = 2 + random.below(call.len().saturating_sub(2).max(1) as u64) as usize;
        if at < call.len() {
            call[at] = random.pick(&["0", "-1", "abc", "07", ""]).into();
        }
    }
    call
}

/// Random sequences: `count` cases named `{prefix}-{seed}-{i}` of `length`
/// calls each drawn by `call`, the clock moving by up to `step - 1` ms
/// (and now and then back).
fn random_sequences(
    [prefix, about]: [&str; 2],
    [count, length]: [usize; 2],
    step: u64,
    seed: u64,
    mut call: impl FnMut(&mut Random) -> Vec<String>,
) -> Vec<Case> {
    let mut random = Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..count)
        .map(|i| {
            let mut at: Millis = 0;
            let steps = (0..length)
                .map(|_| {
                    at += random.below(step) as Millis;
                    if random.below(30) == 0 {
                        at -= random.below(step) as Millis;
                    }
                    (at, call(&mut random))
                })
                .collect();
            Case {
                name: format!("{prefix}-{seed}-{i}"),
                about: about.into(),
                steps,
            }
        })
        .collect()
}

/// Random sequences of `random_call`s of `shape`.
fn random_cases(count: usize, length: usize, step: u64, seed: u64, shape: &Shape) -> Vec<Case> {
    let about = ["random", "random calls on three keys"];
    random_sequences(about, [count, length], step, seed, |r| {
        random_call(r, shape)
    })
}

/// One random GCRA call's words on key `g` or `h`, or now and then a
/// sliding-window call on one of them (WRONGTYPE while it is a bucket):
/// limits from `periods` (seconds) and `counts`, TOKENS and MS now and
/// then.
fn random_gcra_call(random: &mut Random, periods: &[&str], counts: &[&str]) -> Vec<String> {
    random_gcra_call_settling(random, periods, counts, false)
}

/// `random_gcra_call`, and with `settles` a CHARGE or REFUND now and then
/// (one call in four).
fn random_gcra_call_settling(
    random: &mut Random,
    periods: &[&str],
    counts: &[&str],
    settles: bool,
) -> Vec<String> {
    let key = random.pick(&["g", "h"]).to_string();
    if random.below(25) == 0 {
        return words(&["RATELIMIT.CHECK", &key, "1000", "5"]);
    }
    let mut call = words(&[
        "RATELIMIT.GCRA",
        &key,
        random.pick(&["0", "1", "2", "5", "15"]),
        random.pick(counts),
        random.pick(periods),
    ]);
    if random.below(3) == 0 {
        call.extend(words(&["TOKENS", random.pick(&["0", "1", "2", "5", "20"])]));
    }
    if random.below(2) == 0 {
        call.push("MS".into());
    }
    if settles && random.below(4) == 0 {
        call.push(random.pick(&["CHARGE", "REFUND"]).into());
    }
    call
}

/// Random sequences of `random_gcra_call`s.
fn random_gcra_cases(
    count: usize,
    length: usize,
    step: u64,
    seed: u64,
    [periods, counts]: [&[&str]; 2],
) -> Vec<Case> {
    let about = ["random-gcra", "random token bucket calls on two keys"];
    random_sequences(about, [count, length], step, seed, |r| {
        random_gcra_call(r, periods, counts)
    })
}

/// Random sequences of token bucket calls with settlements (CHARGE,
/// REFUND) among them.
fn random_gcra_settling_cases(
    count: usize,
    length: usize,
    step: u64,
    seed: u64,
    [periods, counts]: [&[&str]; 2],
) -> Vec<Case> {
    let about = [
        "random-gcra-settle",
        "random token bucket calls on two keys, with CHARGE and REFUND",
    ];
    random_sequences(about, [count, length], step, seed, |r| {
        random_gcra_call_settling(r, periods, counts, true)
    })
}

fn all_cases() -> Vec<Case> {
    let mut cases = written();
    cases.extend(random_cases(60, 30, 120, 1, &BRISK));
    cases.extend(random_cases(12, 150, 20, 2, &BRISK));
    cases.extend(random_cases(24, 40, 1, 3, &STILL));
    // The same with settlements (issue 27), in cases of their own.
    cases.extend(random_cases(30, 30, 120, 6, &BRISK_CHARGING));
    cases.extend(random_cases(6, 150, 20, 7, &BRISK_CHARGING));
    cases.extend(random_cases(12, 40, 1, 8, &STILL_CHARGING));
    let counts: &[&str] = &["1", "3", "10", "30"];
    let periods: &[&str] = &["0.001", "0.5", "1", "2", "60"];
    cases.extend(random_gcra_cases(20, 40, 400, 4, [periods, counts]));
    // A server's calls are a few ms apart, which a bucket drains at its
    // count per ms: counts close together keep that within the slack
    // when a later call's count is smaller.
    cases.extend(random_gcra_cases(
        8,
        40,
        1,
        5,
        [&["60", "120"], &["1", "2"]],
    ));
    // The same with settlements (issue 27), in cases of their own.
    cases.extend(random_gcra_settling_cases(
        20,
        40,
        400,
        9,
        [periods, counts],
    ));
    cases.extend(random_gcra_settling_cases(
        8,
        40,
        1,
        10,
        [&["60", "120"], &["1", "2"]],
    ));
    cases
}

/// The twin's own refusal of `words` on `space`, if any: its arguments
/// parsed as the module parses them, then, the module's checks passed,
/// COST or a max above 2^53 (COST first; several keys in order, each error
/// naming its key), or an allowed request (CHECK, MCHECK) or a charge
/// (CHARGE, MCHARGE) that would leave a key holding more than 2^53 units.
fn twin_refusal(space: &Keyspace, clock: Millis, words: &[Vec<u8>]) -> Option<String> {
    let name = String::from_utf8_lossy(words.first()?).to_ascii_lowercase();
    // Each key's call: its key, cost, maxes and longest window.
    let request = |key, r: crate::limiter::Request| TwinCall {
        key,
        cost: r.cost().get(),
        maxes: r.limits().iter().map(|l| l.max.get()).collect(),
        longest: r.longest().window.get(),
    };
    let charge = |key, c: crate::limiter::Charge| TwinCall {
        key,
        cost: c.cost().get(),
        maxes: c.limits().iter().map(|l| l.max.get()).collect(),
        longest: c.longest().window.get(),
    };
    let calls: Vec<TwinCall> = match name.as_str() {
        "ratelimit.check" | "ratelimit.peek" => {
            let call = crate::args::parse_limit_call(words).ok()?;
            vec![request(call.key, call.request)]
        }
        "ratelimit.mcheck" | "ratelimit.mpeek" => crate::args::parse_multi_call(words)
            .ok()?
            .calls
            .into_iter()
            .map(|c| request(c.key, c.request))
            .collect(),
        "ratelimit.charge" => {
            let call = crate::args::parse_charge(words).ok()?;
            vec![charge(call.key, call.request)]
        }
        "ratelimit.mcharge" => crate::args::parse_multi_charge(words)
            .ok()?
            .calls
            .into_iter()
            .map(|c| charge(c.key, c.request))
            .collect(),
        _ => return None,
    };
    let several = name.starts_with("ratelimit.m");
    let about = |key: &Vec<u8>, text: String| -> String {
        match several {
            true => format!("ERR key '{}': {text}", String::from_utf8_lossy(key)),
            false => format!("ERR {text}"),
        }
    };
    for call in &calls {
        let inexact = |what: &str| {
            format!("{what} above {EXACT_TEXT} cannot be counted exactly by the script twin (Lua numbers are doubles): load the module for larger values")
        };
        if call.cost > EXACT {
            return Some(about(call.key, inexact("COST")));
        }
        if call.maxes.iter().any(|&max| max > EXACT) {
            return Some(about(call.key, inexact("max")));
        }
    }
    // What records: an allowed CHECK or MCHECK, and any CHARGE or MCHARGE
    // the module takes (not one it refuses, for a key of another type).
    let mut trial = space.clone();
    let records = match trial.call(clock, words) {
        Answer::Decision(d) => name.contains("check") && d.allowed,
        Answer::Joint(j) => name.contains("check") && j.decision.allowed,
        Answer::Settlement(_) | Answer::JointSettlement(_) => true,
        _ => false,
    };
    if !records {
        return None;
    }
    // The cost each key would keep after recording.
    for call in &calls {
        let Some(state) = space.key(clock, call.key) else {
            continue;
        };
        let Some(&(newest, _)) = state.entries.last() else {
            continue;
        };
        let now = newest.max(clock.max(1));
        let window = state.window.max(call.longest);
        let kept: u64 = state
            .entries
            .iter()
            .filter(|e| e.0 > now - window as Millis)
            .map(|e| e.1)
            .sum();
        if kept > EXACT - call.cost {
            return Some(about(call.key, format!(
                "this key would hold more than {EXACT_TEXT} units of cost, which the script twin cannot count exactly: nothing was recorded (load the module, or use smaller units)"
            )));
        }
    }
    None
}

/// One key's part of a call, as the twin's refusals read it.
struct TwinCall<'a> {
    key: &'a Vec<u8>,
    cost: u64,
    maxes: Vec<u64>,
    longest: u64,
}

/// The keys a call names.
fn named_keys(words: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let name = words
        .first()
        .map(|w| String::from_utf8_lossy(w).to_ascii_lowercase())
        .unwrap_or_default();
    if name.starts_with("ratelimit.m") {
        let count: usize = words
            .get(1)
            .and_then(|n| String::from_utf8_lossy(n).parse().ok())
            .unwrap_or(0);
        return words.iter().skip(2).take(count.min(16)).cloned().collect();
    }
    words.get(1).into_iter().cloned().collect()
}

/// CHARGE's four integers.
fn settlement(s: &crate::limiter::Settlement) -> Vec<Value> {
    vec![
        json!(s.over),
        json!(s.remaining),
        json!(s.retry_after_ms),
        json!(s.reset_after_ms),
    ]
}

fn answer_json(answer: &Answer) -> (&'static str, Value) {
    let decision = |d: &crate::limiter::Decision| {
        vec![
            json!(d.allowed as i64),
            json!(d.remaining),
            json!(d.retry_after_ms),
            json!(d.reset_after_ms),
        ]
    };
    match answer {
        Answer::Decision(d) => ("reply", Value::Array(decision(d))),
        Answer::Joint(j) => {
            let mut fields = decision(&j.decision);
            fields.push(json!(j.denied.iter().map(|i| i + 1).collect::<Vec<_>>()));
            ("reply", Value::Array(fields))
        }
        Answer::Settlement(s) => ("reply", json!(settlement(s))),
        Answer::JointSettlement(j) => {
            let mut fields = settlement(&j.settlement);
            fields.push(json!(j.over.iter().map(|i| i + 1).collect::<Vec<_>>()));
            ("reply", Value::Array(fields))
        }
        Answer::Integer(n) => ("reply", json!(n)),
        Answer::Integers(n) => ("reply", json!(n)),
        Answer::Bucket(fields) => ("reply", json!(fields)),
        Answer::Error(text) => ("error", json!(text)),
    }
}

/// A key's state after a call: a log's, a token bucket's (`bucket`: its
/// last charge's time, period and level), or null.
fn key_json(space: &Keyspace, clock: Millis, key: &[u8]) -> Value {
    match space.bucket(clock, key) {
        Some(b) => {
            json!({ "bucket": [b.at - EPOCH, b.period, b.level], "expires": b.expires - EPOCH })
        }
        None => state_json(space.key(clock, key)),
    }
}

fn state_json(state: Option<KeyState>) -> Value {
    match state {
        None => Value::Null,
        Some(s) => json!({
            "entries": s.entries.iter().map(|&(at, cost)| (at - EPOCH, cost)).collect::<Vec<_>>(),
            "window": if s.entries.is_empty() { 0 } else { s.window },
            "blocked_until": if s.blocked_until == 0 { 0 } else { s.blocked_until - EPOCH },
            "expires": s.expires - EPOCH,
        }),
    }
}

/// A case a real server can replay on its own clock: its calls within
/// 10 ms of each other, every window and block they name at least a
/// second, no PRECISION (whose cells a server's calls may straddle), and
/// token buckets that drain a token a second or slower, so nothing a call
/// sees depends on the few milliseconds between the server's calls (but
/// the waits, resets and expiries, which move by them).
fn pinnable(case: &Case) -> bool {
    let first = case.steps.first().map_or(0, |s| s.0);
    case.steps.iter().all(|(at, words)| {
        let bytes: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        let fast_bucket = words[0].eq_ignore_ascii_case("ratelimit.gcra")
            && crate::args::parse_gcra(&bytes, crate::args::GcraSyntax::Module)
                .is_ok_and(|c| c.limit.period() < 1000 * c.limit.count());
        if fast_bucket {
            return false;
        }
        // Each key's call: its windows, its block and its precision.
        let request = |r: crate::limiter::Request| {
            let windows: Vec<u64> = r.limits().iter().map(|l| l.window.get()).collect();
            (windows, r.block().map(|b| b.get()), r.precision().get())
        };
        let charge = |c: crate::limiter::Charge| {
            let windows: Vec<u64> = c.limits().iter().map(|l| l.window.get()).collect();
            (windows, None, c.precision().get())
        };
        let requests: Vec<(Vec<u64>, Option<u64>, u64)> =
            match words[0].to_ascii_lowercase().as_str() {
                "ratelimit.check" | "ratelimit.peek" => crate::args::parse_limit_call(&bytes)
                    .map(|c| vec![request(c.request)])
                    .unwrap_or_default(),
                "ratelimit.mcheck" | "ratelimit.mpeek" => crate::args::parse_multi_call(&bytes)
                    .map(|c| c.calls.into_iter().map(|c| request(c.request)).collect())
                    .unwrap_or_default(),
                "ratelimit.charge" => crate::args::parse_charge(&bytes)
                    .map(|c| vec![charge(c.request)])
                    .unwrap_or_default(),
                "ratelimit.mcharge" => crate::args::parse_multi_charge(&bytes)
                    .map(|c| c.calls.into_iter().map(|c| charge(c.request)).collect())
                    .unwrap_or_default(),
                _ => vec![],
            };
        (at - first).abs() <= 10
            && requests.iter().all(|(windows, block, precision)| {
                windows.iter().all(|&w| w >= 1000)
                    && block.is_none_or(|b| b >= 1000)
                    && *precision == 1
            })
    })
}

/// One case as JSON: every step with the module's answer, the twin's where
/// it differs, and the named keys' states (the twin's where they differ).
fn render(case: &Case) -> Value {
    let mut module = Keyspace::default();
    let mut twin = Keyspace::default();
    let pinned = pinnable(case);
    let steps: Vec<Value> = case
        .steps
        .iter()
        .map(|(at, words)| {
            let clock = EPOCH + at;
            let bytes: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
            let answer = module.call(clock, &bytes);
            let twin_answer = match twin_refusal(&twin, clock, &bytes) {
                Some(text) => Answer::Error(text),
                None => twin.call(clock, &bytes),
            };
            let mut step = serde_json::Map::new();
            step.insert("at".into(), json!(at));
            step.insert("call".into(), json!(words));
            let (kind, value) = answer_json(&answer);
            step.insert(kind.into(), value);
            if twin_answer != answer {
                let (kind, value) = answer_json(&twin_answer);
                step.insert(format!("twin_{kind}"), value);
            }
            let mut state = serde_json::Map::new();
            let mut twin_state = serde_json::Map::new();
            for key in named_keys(&bytes) {
                let name = String::from_utf8_lossy(&key).to_string();
                state.insert(name.clone(), key_json(&module, clock, &key));
                twin_state.insert(name, key_json(&twin, clock, &key));
            }
            if twin_state != state {
                step.insert("twin_state".into(), Value::Object(twin_state));
            }
            step.insert("state".into(), Value::Object(state));
            Value::Object(step)
        })
        .collect();
    json!({ "name": case.name, "about": case.about, "pinned": pinned, "epoch": EPOCH, "steps": steps })
}

/// A word as a transcript shows it: as it is, or quoted (JSON's escapes)
/// if it is empty or holds a space, a quote or a control byte.
fn shown_word(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_graphic() && c != '"');
    match plain {
        true => word.to_string(),
        false => Value::String(word.into()).to_string(),
    }
}

/// An answer as a transcript shows it: the reply's integers (a several-key
/// call's denied keys in brackets), or the error.
fn shown_answer(kind: &str, value: &Value) -> String {
    let shown = |v: &Value| match v {
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ),
        other => other.to_string(),
    };
    match (kind, value) {
        ("error", Value::String(text)) => format!("(error) {text}"),
        (_, Value::Array(items)) => items.iter().map(shown).collect::<Vec<_>>().join(" "),
        (_, other) => other.to_string(),
    }
}

/// A case as the documentation shows it: its `about`, then each call at
/// its time with the module's answer (and the twin's where it differs).
fn transcript(case: &Case) -> String {
    let rendered = render(case);
    let mut text = format!("# {}\n", case.about);
    for step in rendered["steps"].as_array().into_iter().flatten() {
        let words: Vec<String> = step["call"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| shown_word(w.as_str().unwrap_or_default()))
            .collect();
        let answer = |prefix: &str| {
            ["reply", "error"].iter().find_map(|kind| {
                let value = step.get(format!("{prefix}{kind}"))?;
                Some(shown_answer(kind, value))
            })
        };
        let at = format!("t={}", step["at"]);
        text += &format!("{at:<7} {}\n", words.join(" "));
        text += &format!("{:<7} -> {}\n", "", answer("").unwrap_or_default());
        if let Some(twin) = answer("twin_") {
            text += &format!("{:<7} -> {twin}   (the script twin)\n", "");
        }
    }
    text
}

/// The corpus, one case a line.
pub fn corpus() -> String {
    all_cases()
        .iter()
        .map(|c| render(c).to_string() + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;
    use std::collections::BTreeMap;
    use std::path::Path;

    fn checked_in() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../contract/corpus.jsonl")
    }

    /// `make corpus` writes the corpus (RATELIMIT_WRITE_CORPUS=1); `make
    /// test` fails when the checked-in one is not what the model says.
    #[test]
    fn the_checked_in_corpus_is_what_the_model_says() {
        let generated = corpus();
        if std::env::var_os("RATELIMIT_WRITE_CORPUS").is_some() {
            std::fs::write(checked_in(), &generated).expect("write contract/corpus.jsonl");
        }
        let stored = std::fs::read_to_string(checked_in()).unwrap_or_default();
        let differs = stored
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b);
        assert!(
            stored == generated,
            "contract/corpus.jsonl is not what the model says (first different line: {differs:?}, lines {} and {}): run `make corpus` and review the diff",
            stored.lines().count(),
            generated.lines().count()
        );
    }

    /// The documentation's examples: each `<!-- corpus: NAME -->` line in
    /// README.md or docs/*.md is followed by a text block that is case
    /// NAME's transcript (`make corpus` writes them).
    #[test]
    fn the_documented_examples_are_corpus_cases() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut pages = vec![root.join("README.md")];
        let docs = std::fs::read_dir(root.join("docs")).expect("docs/");
        pages.extend(
            docs.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "md")),
        );
        let cases = all_cases();
        let mut shown = 0;
        for page in pages {
            let text = std::fs::read_to_string(&page).expect("a page");
            let (written, count) = with_transcripts(&text, &cases)
                .unwrap_or_else(|e| panic!("{}: {e}", page.display()));
            shown += count;
            if std::env::var_os("RATELIMIT_WRITE_CORPUS").is_some() {
                std::fs::write(&page, &written).expect("write a page");
                continue;
            }
            assert!(
                written == text,
                "{}: an example is not its corpus case's transcript: run `make corpus` and review the diff",
                page.display()
            );
        }
        assert!(shown >= 5, "the documentation shows {shown} corpus cases");
    }

    /// `text` with the block after each corpus marker replaced by the
    /// case's transcript, and how many it holds.
    fn with_transcripts(text: &str, cases: &[Case]) -> Result<(String, usize), String> {
        let mut out = String::new();
        let mut lines = text.split_inclusive('\n');
        let mut count = 0;
        while let Some(line) = lines.next() {
            out += line;
            let Some(name) = line
                .trim()
                .strip_prefix("<!-- corpus: ")
                .and_then(|l| l.strip_suffix(" -->"))
            else {
                continue;
            };
            let case = cases
                .iter()
                .find(|c| c.name == name)
                .ok_or(format!("no corpus case {name}"))?;
            if lines.next().map(str::trim_end) != Some("```text") {
                return Err(format!("corpus: {name} is not followed by a ```text block"));
            }
            lines
                .by_ref()
                .find(|l| l.trim_end() == "```")
                .ok_or(format!("corpus: {name}'s block does not end"))?;
            out += &format!("```text\n{}```\n", transcript(case));
            count += 1;
        }
        Ok((out, count))
    }

    /// The core (the module's logic without Redis: the argument parser,
    /// `limiter` and `state`) answers every case as the corpus says, and
    /// leaves each key as the corpus says.
    #[test]
    fn the_core_answers_the_corpus() {
        let corpus = std::fs::read_to_string(checked_in()).expect("contract/corpus.jsonl");
        for line in corpus.lines() {
            let case: Value = serde_json::from_str(line).expect("a JSON case");
            let mut core = Core::default();
            for (index, step) in case["steps"].as_array().expect("steps").iter().enumerate() {
                let clock = EPOCH + step["at"].as_i64().expect("at");
                let words: Vec<Vec<u8>> = step["call"]
                    .as_array()
                    .expect("call")
                    .iter()
                    .map(|w| w.as_str().expect("a word").as_bytes().to_vec())
                    .collect();
                let (kind, got) = answer_json(&core.call(clock, &words));
                assert_eq!(
                    step[kind], got,
                    "{} step {index}: {:?}",
                    case["name"], step["call"]
                );
                for (name, expected) in step["state"].as_object().expect("state") {
                    let state = core.state(clock, name.as_bytes());
                    assert_eq!(
                        &state, expected,
                        "{} step {index}: key {name}",
                        case["name"]
                    );
                }
            }
        }
    }

    /// The module's command layer over the core's own types, without Redis:
    /// what src/module/commands.rs does with a key's `State`.
    #[derive(Default)]
    struct Core {
        keys: BTreeMap<Vec<u8>, (State, Millis)>,
        /// Token buckets, and when each expires.
        buckets: BTreeMap<Vec<u8>, (crate::gcra::Bucket, Millis)>,
    }

    impl Core {
        fn state(&self, clock: Millis, key: &[u8]) -> Value {
            if let Some((bucket, expires)) = self.buckets.get(key).filter(|b| clock <= b.1) {
                return json!({
                    "bucket": [bucket.at() - EPOCH, bucket.period(), bucket.level()],
                    "expires": expires - EPOCH,
                });
            }
            let Some((state, expires)) = self.keys.get(key).filter(|k| clock <= k.1) else {
                return Value::Null;
            };
            let entries: Vec<(Millis, u64)> = state
                .log()
                .view()
                .entries()
                .map(|e| (e.at - EPOCH, e.cost))
                .collect();
            json!({
                "entries": entries,
                "window": if entries.is_empty() { 0 } else { state.log().window() },
                "blocked_until": state.blocked_until().map_or(0, |b| b - EPOCH),
                "expires": expires - EPOCH,
            })
        }

        fn call(&mut self, clock: Millis, words: &[Vec<u8>]) -> Answer {
            // A server expires a key when a call names it.
            for key in named_keys(words) {
                if self.keys.get(&key).is_some_and(|k| clock > k.1) {
                    self.keys.remove(&key);
                }
                if self.buckets.get(&key).is_some_and(|b| clock > b.1) {
                    self.buckets.remove(&key);
                }
            }
            // The model's command layer reads the arguments: the core's
            // part is what it decides and stores.
            let mut expected = Keyspace::default();
            let answer = expected.call(clock, words);
            if let Answer::Error(_) = answer {
                return answer;
            }
            let name = String::from_utf8_lossy(&words[0]).to_ascii_lowercase();
            // A command of one type on a key of the other.
            let other_type = match name.as_str() {
                "ratelimit.gcra" => &self.keys.keys().cloned().collect::<Vec<_>>(),
                _ => &self.buckets.keys().cloned().collect::<Vec<_>>(),
            };
            if named_keys(words).iter().any(|k| other_type.contains(k)) {
                return Answer::Error(
                    "WRONGTYPE Operation against a key holding the wrong kind of value".into(),
                );
            }
            match name.as_str() {
                "ratelimit.gcra" => {
                    let call = crate::args::parse_gcra(words, crate::args::GcraSyntax::Module)
                        .expect("parsed");
                    let stored = self.buckets.get(call.key).map(|b| &b.0);
                    let (reply, write) = match call.op {
                        crate::args::GcraOp::Request => {
                            let v = crate::gcra::decide(stored, clock, &call.limit, call.tokens);
                            let write = v.charge.map(crate::gcra::Write::Store);
                            (v.decision.reply(call.units), write)
                        }
                        op => {
                            let settled = match op {
                                crate::args::GcraOp::Charge => {
                                    crate::gcra::charge(stored, clock, &call.limit, call.tokens)
                                }
                                _ => {
                                    Ok(crate::gcra::refund(stored, clock, &call.limit, call.tokens))
                                }
                            };
                            let Ok(s) = settled else {
                                return Answer::Error(format!(
                                    "ERR {}",
                                    crate::args::GCRA_OVERFLOW
                                ));
                            };
                            (s.settlement.reply(call.units), s.write)
                        }
                    };
                    match write {
                        Some(crate::gcra::Write::Store(charge)) => {
                            self.buckets
                                .insert(call.key.clone(), (charge.bucket, charge.expires_at));
                        }
                        Some(crate::gcra::Write::Delete) => {
                            self.buckets.remove(call.key);
                        }
                        None => {}
                    }
                    Answer::Bucket(reply)
                }
                "ratelimit.check" | "ratelimit.peek" => {
                    let call = crate::args::parse_limit_call(words).expect("parsed");
                    Answer::Decision(self.decide(
                        clock,
                        call.key,
                        &call.request,
                        name.ends_with("check"),
                    ))
                }
                "ratelimit.mcheck" | "ratelimit.mpeek" => {
                    let call = crate::args::parse_multi_call(words).expect("parsed");
                    Answer::Joint(self.decide_all(clock, &call, name.ends_with("check")))
                }
                "ratelimit.charge" => {
                    let call = crate::args::parse_charge(words).expect("parsed");
                    self.charge(clock, call.key, &call.request)
                }
                "ratelimit.mcharge" => {
                    let call = crate::args::parse_multi_charge(words).expect("parsed");
                    self.charge_all(clock, &call)
                }
                "ratelimit.undo" => {
                    let call = crate::args::parse_undo(words).expect("parsed");
                    Answer::Integer(self.refund(clock, call.key, call.units))
                }
                "ratelimit.mundo" => {
                    let call = crate::args::parse_multi_undo(words).expect("parsed");
                    Answer::Integers(
                        call.keys
                            .iter()
                            .map(|k| self.refund(clock, k, call.units))
                            .collect(),
                    )
                }
                _ => {
                    let call = crate::args::parse_unblock(words).expect("parsed");
                    Answer::Integer(self.unblock(clock, call.key))
                }
            }
        }

        fn existing(&self, key: &[u8]) -> Option<&State> {
            self.keys.get(key).map(|k| &k.0).filter(|s| !s.is_empty())
        }

        fn write(&mut self, key: &[u8], write: &crate::limiter::Write) {
            let mut entry = self.keys.remove(key).unwrap_or_default();
            crate::limiter::apply(&mut entry.0, write);
            entry.1 = expiry(&entry.0);
            self.keys.insert(key.to_vec(), entry);
        }

        fn decide(
            &mut self,
            clock: Millis,
            key: &[u8],
            request: &crate::limiter::Request,
            check: bool,
        ) -> crate::limiter::Decision {
            if !check {
                return crate::limiter::peek(self.existing(key), clock, request);
            }
            let verdict = crate::limiter::decide(self.existing(key), clock, request);
            if let Some(write) = &verdict.write {
                self.write(key, write);
            }
            verdict.decision
        }

        fn decide_all(
            &mut self,
            clock: Millis,
            call: &crate::args::MultiCall<'_, Vec<u8>>,
            check: bool,
        ) -> crate::limiter::Joint {
            let keys: Vec<(Option<&State>, &crate::limiter::Request)> = call
                .calls
                .iter()
                .map(|c| (self.existing(c.key), &c.request))
                .collect();
            if !check {
                return crate::limiter::peek_all(&keys, clock);
            }
            let verdict = crate::limiter::decide_all(&keys, clock);
            for (c, write) in call.calls.iter().zip(&verdict.writes) {
                if let Some(write) = write {
                    self.write(c.key, write);
                }
            }
            verdict.joint
        }

        /// CHARGE: the record written (refused whole if it would
        /// overflow), then the answer read from the key as it stands.
        fn charge(&mut self, clock: Millis, key: &[u8], charge: &crate::limiter::Charge) -> Answer {
            let Ok(record) = crate::limiter::charge(self.existing(key), clock, charge) else {
                return Answer::Error(format!("ERR {}", crate::args::OVERFLOW));
            };
            self.write(key, &crate::limiter::Write::Record(record));
            Answer::Settlement(crate::limiter::settled(&self.keys[key].0, clock, charge))
        }

        /// MCHARGE: every key's record checked before any is written.
        fn charge_all(
            &mut self,
            clock: Millis,
            call: &crate::args::MultiChargeCall<'_, Vec<u8>>,
        ) -> Answer {
            let keys: Vec<(Option<&State>, &crate::limiter::Charge)> = call
                .calls
                .iter()
                .map(|c| (self.existing(c.key), &c.request))
                .collect();
            let records = match crate::limiter::charge_all(&keys, clock) {
                Ok(records) => records,
                Err((position, _)) => {
                    let key = call.calls[position].key;
                    return Answer::Error(format!(
                        "ERR {}",
                        crate::args::about_key(key, crate::args::OVERFLOW)
                    ));
                }
            };
            for (c, record) in call.calls.iter().zip(records) {
                self.write(c.key, &crate::limiter::Write::Record(record));
            }
            let after: Vec<(&State, &crate::limiter::Charge)> = call
                .calls
                .iter()
                .map(|c| (&self.keys[c.key].0, &c.request))
                .collect();
            Answer::JointSettlement(crate::limiter::settled_all(&after, clock))
        }

        fn refund(&mut self, clock: Millis, key: &[u8], units: std::num::NonZeroU64) -> i64 {
            let Some(mut entry) = self.keys.remove(key) else {
                return 0;
            };
            let removed = crate::limiter::refund(&mut entry.0, units);
            let blocked = entry.0.blocked_until().is_some_and(|b| b > clock);
            if entry.0.log().is_empty() && removed > 0 {
                if !blocked {
                    return removed as i64;
                }
                entry.1 = entry.0.blocked_until().unwrap_or(0);
            }
            self.keys.insert(key.to_vec(), entry);
            removed as i64
        }

        fn unblock(&mut self, clock: Millis, key: &[u8]) -> i64 {
            let Some(mut entry) = self.keys.remove(key) else {
                return 0;
            };
            if !crate::limiter::unblock(&mut entry.0, clock) {
                self.keys.insert(key.to_vec(), entry);
                return 0;
            }
            let own = expiry(&entry.0);
            if !entry.0.log().is_empty() && own > clock {
                entry.1 = own;
                self.keys.insert(key.to_vec(), entry);
            }
            1
        }
    }

    /// When a key expires after a write: its newest entry leaves its window,
    /// or its block ends.
    fn expiry(state: &State) -> Millis {
        let log = state.log();
        let own = log
            .view()
            .entries()
            .next_back()
            .map_or(0, |e| e.at + log.window() as Millis);
        own.max(state.blocked_until().unwrap_or(0))
    }
}
