// flat_file.h: host-side reader of the flat weight file written by host/weight_loader.py.
// The header structs and tensor indices come from generated_layout.h (host/layout.py); this
// file only checks them: magic, version, size, the model dimensions this build was compiled
// for, every tensor's name, shape and dtype, and optionally the payload CRC-32.
#pragma once
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <generated_layout.h>  // -I picks the model: src/ by default, a generated one for others

struct FlatFileInfo {
  FlatHeader header;
  std::vector<FlatTensorEntry> tensors;
};

static uint32_t crc32_update(uint32_t crc, const unsigned char* data, size_t n) {
  static uint32_t table[256];
  static bool ready = false;
  if (!ready) {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    ready = true;
  }
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

// Expected name of tensor `index` in the table (the order of host/layout.py:tensor_specs).
static std::string flat_tensor_name(int index) {
  if (index == MK_T_EMBED) return "embed";
  if (index < MK_T_FINAL_NORM) {
    const int i = index - MK_T_LAYER0;
    return "layers." + std::to_string(i / MK_TENSORS_PER_LAYER) + "." +
           MK_LAYER_TENSOR_NAMES[i % MK_TENSORS_PER_LAYER];
  }
  if (index == MK_T_FINAL_NORM) return "final_norm";
  if (index == MK_T_ROPE_INV_FREQ) return "rope_inv_freq";
  return "lm_head";
}

// Reads and checks the header and table. On failure returns false with a one-line message.
static bool flat_read_info(const char* path, FlatFileInfo* info, std::string* err) {
  FILE* f = fopen(path, "rb");
  auto fail = [&](const std::string& m) { *err = std::string(path) + ": " + m; if (f) fclose(f); return false; };
  if (!f) return fail("cannot open the flat weight file; create it with `megakernel convert MODEL OUT.bin`");
  FlatHeader& h = info->header;
  if (fread(&h, sizeof h, 1, f) != 1 || memcmp(h.magic, MK_FLAT_MAGIC, sizeof(MK_FLAT_MAGIC)) != 0)
    return fail("wrong magic, not a megakernel flat file; convert the checkpoint with `megakernel convert`");
  if (h.version != MK_FLAT_VERSION)
    return fail("format version " + std::to_string(h.version) + ", this build reads version " +
                std::to_string(MK_FLAT_VERSION) + "; re-convert the checkpoint");
  fseek(f, 0, SEEK_END);
  const unsigned long long size = (unsigned long long)ftell(f);
  if (size != h.header_bytes + h.payload_bytes)
    return fail("size " + std::to_string(size) + " bytes, header says " +
                std::to_string(h.header_bytes + h.payload_bytes) + "; the file is truncated or damaged, re-convert it");
  const uint32_t want[8] = {MK_VOCAB, MK_HIDDEN, MK_INTER, MK_LAYERS, MK_Q_HEADS, MK_KV_HEADS, MK_HEAD_DIM, MK_MAX_POS};
  const uint32_t got[8] = {h.vocab_size, h.hidden_size, h.intermediate_size, h.num_hidden_layers,
                           h.num_attention_heads, h.num_key_value_heads, h.head_dim, h.max_position_embeddings};
  if (memcmp(want, got, sizeof want) != 0 || (float)h.rms_norm_eps != MK_RMS_EPS) {
    char m[600];
    snprintf(m, sizeof m, "model dimensions (vocab %u hidden %u inter %u layers %u heads %u/%u head_dim %u max_pos %u "
             "eps %g) differ from this build's (vocab %d hidden %d inter %d layers %d heads %d/%d head_dim %d max_pos %d "
             "eps %g); rebuild the kernel for this model (megakernel.launcher builds from the file's config)",
             got[0], got[1], got[2], got[3], got[4], got[5], got[6], got[7], h.rms_norm_eps, MK_VOCAB, MK_HIDDEN,
             MK_INTER, MK_LAYERS, MK_Q_HEADS, MK_KV_HEADS, MK_HEAD_DIM, MK_MAX_POS, (double)MK_RMS_EPS);
    return fail(m);
  }
  const uint32_t n_expected = MK_T_ROPE_INV_FREQ + 1 + (h.tie_word_embeddings ? 0 : 1);
  if (h.n_tensors != n_expected)
    return fail("tensor table has " + std::to_string(h.n_tensors) + " entries, expected " +
                std::to_string(n_expected) + "; re-convert the checkpoint");
  info->tensors.resize(h.n_tensors);
  fseek(f, sizeof h, SEEK_SET);
  if (fread(info->tensors.data(), sizeof(FlatTensorEntry), h.n_tensors, f) != h.n_tensors)
    return fail("tensor table unreadable; re-convert the checkpoint");
  for (uint32_t i = 0; i < h.n_tensors; ++i) {
    const FlatTensorEntry& t = info->tensors[i];
    const std::string name(t.name, strnlen(t.name, sizeof t.name));
    if (name != flat_tensor_name((int)i))
      return fail("tensor " + std::to_string(i) + " is '" + name + "', expected '" + flat_tensor_name((int)i) +
                  "'; re-convert the checkpoint");
    if (t.offset % MK_FLAT_ALIGN || t.offset + t.nbytes > h.payload_bytes)
      return fail("tensor '" + name + "' lies outside the payload; re-convert the checkpoint");
    const uint32_t dt = (i == MK_T_ROPE_INV_FREQ) ? MK_DTYPE_F32 : MK_DTYPE_BF16;
    if (t.dtype != dt) return fail("tensor '" + name + "' has the wrong dtype; re-convert the checkpoint");
  }
  fclose(f);
  return true;
}
