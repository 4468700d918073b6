//! TEMPORARY stub of the set catalog builder (replaced by the real module).
#![allow(missing_docs, dead_code)]
use crate::format::meta::{to_cbor, CatalogEntry};
use crate::format::record::RecordType;
use crate::format::setcat::*;
use crate::format::stream::StreamFramer;

use super::Result;

pub struct SetCatalogBuilder {
    set_uuid: [u8; 16],
    set_name: String,
    volumes: Vec<VolumeInfo>,
    sessions: Vec<SessionInfo>,
    entries: Vec<SetCatalogEntry>,
    bytes: u64,
}

pub struct WrittenSetCatalog {
    pub entries: u64,
    pub pages: u32,
    pub index_blocks: u64,
}

impl SetCatalogBuilder {
    pub fn new(set_uuid: [u8; 16], set_name: String) -> Result<Self> {
        Ok(SetCatalogBuilder {
            set_uuid,
            set_name,
            volumes: vec![],
            sessions: vec![],
            entries: vec![],
            bytes: 0,
        })
    }
    pub fn volumes(&self) -> &[VolumeInfo] {
        &self.volumes
    }
    pub fn upsert_volume(&mut self, v: VolumeInfo) {
        self.volumes.retain(|x| x.volume_seq != v.volume_seq);
        self.volumes.push(v);
        self.volumes.sort_by_key(|v| v.volume_seq);
    }
    pub fn sessions(&self) -> &[SessionInfo] {
        &self.sessions
    }
    pub fn add_session(&mut self, mut s: SessionInfo) -> u32 {
        if let Some(x) = self
            .sessions
            .iter_mut()
            .find(|x| x.session_uuid == s.session_uuid)
        {
            s.index = x.index;
            *x = s;
            return x.index;
        }
        s.index = self.sessions.len() as u32;
        self.sessions.push(s);
        self.sessions.len() as u32 - 1
    }
    pub fn session_mut(&mut self, index: u32) -> Option<&mut SessionInfo> {
        self.sessions.get_mut(index as usize)
    }
    pub fn add_entry(&mut self, session: u32, e: &CatalogEntry) -> Result<()> {
        let s = SetCatalogEntry {
            session,
            entry: e.clone(),
        };
        self.bytes += to_cbor(&s).len() as u64 + 8;
        self.entries.push(s);
        Ok(())
    }
    pub fn entries(&self) -> u64 {
        self.entries.len() as u64
    }
    pub fn estimated_tape_bytes(&self, block_size: u32) -> u64 {
        (self.bytes + 64 * 1024) * 2 + 4 * block_size as u64
    }
    pub fn write(
        &mut self,
        volume_seq: u32,
        framer: &mut StreamFramer,
        emit: &mut impl FnMut(Vec<u8>) -> Result<Vec<u8>>,
    ) -> Result<WrittenSetCatalog> {
        self.entries.sort_by(|a, b| {
            path_order(&a.entry.path, &b.entry.path).then(a.session.cmp(&b.session))
        });
        let h = SetCatalogHeader {
            set_uuid: self.set_uuid,
            set_name: self.set_name.clone(),
            volume_seq,
            written: crate::format::meta::Timestamp::now(),
            volumes: self.volumes.len() as u32,
            sessions: self.sessions.len() as u32,
            entries: self.entries.len() as u64,
            pages: 0,
        };
        framer.push_record(RecordType::SetCatalogHeader, 0, &[&to_cbor(&h)], emit)?;
        for v in &self.volumes {
            framer.push_record(RecordType::VolumeInfo, 0, &[&to_cbor(v)], emit)?;
        }
        for s in &self.sessions {
            framer.push_record(RecordType::SessionInfo, 0, &[&to_cbor(s)], emit)?;
        }
        let mut d = blake3::Hasher::new();
        for e in &self.entries {
            let b = to_cbor(e);
            d.update(&b);
            framer.push_record(RecordType::SetCatalogEntry, 0, &[&b], emit)?;
        }
        let end = SetCatalogEnd {
            entries: self.entries.len() as u64,
            digest: *d.finalize().as_bytes(),
        };
        framer.push_record(RecordType::SetCatalogEnd, 0, &[&to_cbor(&end)], emit)?;
        Ok(WrittenSetCatalog {
            entries: self.entries.len() as u64,
            pages: 0,
            index_blocks: 0,
        })
    }
    pub fn for_each_entry(
        &mut self,
        mut f: impl FnMut(&SetCatalogEntry) -> Result<()>,
    ) -> Result<()> {
        for e in &self.entries {
            f(e)?;
        }
        Ok(())
    }
}

pub struct SetCatalogCopy {
    pub header: SetCatalogHeader,
    pub builder: SetCatalogBuilder,
    pub lost: Vec<super::reader::LostBlocks>,
    pub digest_ok: bool,
}

pub fn read_set_catalog(
    _drive: &mut dyn crate::device::TapeDrive,
    _set_uuid: [u8; 16],
    _tape_file: u32,
    _session: u32,
) -> Result<SetCatalogCopy> {
    Err(super::Error::Usage("stub".into()))
}
