//! Decode and encode throughput of small PUBLISH packets, the broker's
//! per-message work on the wire. Run: `cargo bench -p rookery-benches --bench codec`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rookery_codec::{
    ByteString, MAX_PACKET_SIZE, Packet, PacketId, ProtocolVersion, Publish, PublishProperties,
    QoS, decode,
};

/// Packets per iteration: a socket read holds many small publishes at load.
const BATCH: usize = 1_000;
const PAYLOAD: [u8; 64] = [0x5A; 64];

fn publish(index: usize, qos: QoS) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteString::from(format!("devices/{index:06}/telemetry")),
        packet_id: match qos {
            QoS::AtMostOnce => None,
            _ => PacketId::new(u16::try_from(index % 65_535 + 1).unwrap_or(1)),
        },
        properties: PublishProperties::default(),
        payload: Bytes::from_static(&PAYLOAD),
    })
}

fn cases() -> Vec<(&'static str, ProtocolVersion, QoS)> {
    vec![
        ("v3.1.1 qos0", ProtocolVersion::V3_1_1, QoS::AtMostOnce),
        ("v5 qos0", ProtocolVersion::V5, QoS::AtMostOnce),
        ("v5 qos1", ProtocolVersion::V5, QoS::AtLeastOnce),
    ]
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode publish 64B");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, version, qos) in cases() {
        let mut wire = BytesMut::new();
        for index in 0..BATCH {
            publish(index, qos)
                .encode(version, &mut wire)
                .unwrap_or_default();
        }
        let wire = wire.freeze();
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                let mut count = 0;
                while let Ok(Some(packet)) = decode(&mut buf, version, MAX_PACKET_SIZE) {
                    black_box(&packet);
                    count += 1;
                }
                assert_eq!(count, BATCH);
            });
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode publish 64B");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, version, qos) in cases() {
        let packets: Vec<Packet> = (0..BATCH).map(|index| publish(index, qos)).collect();
        let mut buf = BytesMut::with_capacity(128 * BATCH);
        group.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                for packet in &packets {
                    let _ = black_box(packet.encode(version, &mut buf));
                }
                black_box(buf.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
