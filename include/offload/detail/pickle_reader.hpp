#pragma once
/// \file
/// A small, strict unpickler for the `data.pkl` record of a zip-format `torch.save(state_dict)`.
///
/// It interprets exactly the protocol-2 subset that torch.save emits for a state dict:
/// PROTO 2, EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, MARK, BINUNICODE, BINPUT/LONG_BINPUT,
/// BINGET/LONG_BINGET, GLOBAL (whitelisted names only), BINPERSID, TUPLE/TUPLE1/2/3,
/// BININT/BININT1/BININT2/LONG1, BINFLOAT, NEWTRUE/NEWFALSE, NONE, REDUCE, SETITEM(S),
/// APPEND(S), BUILD (the OrderedDict `_metadata` attribute) and STOP. Callables reachable through
/// GLOBAL: `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
/// `torch._utils._rebuild_parameter` and the `torch.<Type>Storage` classes (used only inside
/// persistent ids `('storage', storage_type, key, location, numel)`). Anything else is rejected
/// with an error naming the opcode (or global) and its byte offset; nothing is ever executed.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/core/Storage.h>
#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)

#include <offload/errors.hpp>

namespace offload::detail {

struct pickle_object;
using pickle_ref = std::shared_ptr<pickle_object>;

/// One unpickled value. Containers hold shared references so memoised objects keep identity.
struct pickle_object {
  enum class kind { none, boolean, integer, floating, string, tuple, list, dict, global, storage, tensor };
  kind type = kind::none;
  bool boolean = false;
  std::int64_t integer = 0;
  double floating = 0.0;
  std::string text;                 ///< string value, or "module.name" of a global
  bool ordered = false;             ///< dict built by collections.OrderedDict
  std::vector<pickle_ref> items;    ///< tuple / list elements
  std::vector<std::pair<pickle_ref, pickle_ref>> entries; ///< dict entries in insertion order
  at::Storage storage;              ///< kind::storage
  c10::ScalarType dtype = c10::ScalarType::Undefined; ///< kind::storage element type
  std::int64_t numel = 0;           ///< kind::storage element count
  at::Tensor tensor;                ///< kind::tensor
};

inline const char* pickle_kind_name(pickle_object::kind k) {
  using K = pickle_object::kind;
  switch (k) {
  case K::none: return "None";
  case K::boolean: return "bool";
  case K::integer: return "int";
  case K::floating: return "float";
  case K::string: return "str";
  case K::tuple: return "tuple";
  case K::list: return "list";
  case K::dict: return "dict";
  case K::global: return "global";
  case K::storage: return "storage";
  case K::tensor: return "tensor";
  }
  return "?";
}

/// Name of a pickle opcode byte (all protocols), for error messages.
inline const char* pickle_opcode_name(unsigned char op) {
  switch (op) {
  case '(': return "MARK";           case '.': return "STOP";          case '0': return "POP";
  case '2': return "DUP";            case 'F': return "FLOAT";         case 'I': return "INT";
  case 'J': return "BININT";         case 'K': return "BININT1";       case 'L': return "LONG";
  case 'M': return "BININT2";        case 'N': return "NONE";          case 'P': return "PERSID";
  case 'Q': return "BINPERSID";      case 'R': return "REDUCE";        case 'S': return "STRING";
  case 'T': return "BINSTRING";      case 'U': return "SHORT_BINSTRING"; case 'V': return "UNICODE";
  case 'X': return "BINUNICODE";     case 'a': return "APPEND";        case 'b': return "BUILD";
  case 'c': return "GLOBAL";         case 'd': return "DICT";          case '}': return "EMPTY_DICT";
  case 'e': return "APPENDS";        case 'g': return "GET";           case 'h': return "BINGET";
  case 'i': return "INST";           case 'j': return "LONG_BINGET";   case 'l': return "LIST";
  case ']': return "EMPTY_LIST";     case 'o': return "OBJ";           case 'p': return "PUT";
  case 'q': return "BINPUT";         case 'r': return "LONG_BINPUT";   case 's': return "SETITEM";
  case 't': return "TUPLE";          case ')': return "EMPTY_TUPLE";   case 'u': return "SETITEMS";
  case 'G': return "BINFLOAT";       case 0x80: return "PROTO";        case 0x81: return "NEWOBJ";
  case 0x82: return "EXT1";          case 0x83: return "EXT2";         case 0x84: return "EXT4";
  case 0x85: return "TUPLE1";        case 0x86: return "TUPLE2";       case 0x87: return "TUPLE3";
  case 0x88: return "NEWTRUE";       case 0x89: return "NEWFALSE";     case 0x8a: return "LONG1";
  case 0x8b: return "LONG4";         case 'B': return "BINBYTES";      case 'C': return "SHORT_BINBYTES";
  case 0x8c: return "SHORT_BINUNICODE"; case 0x8d: return "BINUNICODE8"; case 0x8e: return "BINBYTES8";
  case 0x8f: return "EMPTY_SET";     case 0x90: return "ADDITEMS";     case 0x91: return "FROZENSET";
  case 0x92: return "NEWOBJ_EX";     case 0x93: return "STACK_GLOBAL"; case 0x94: return "MEMOIZE";
  case 0x95: return "FRAME";         case 0x96: return "BYTEARRAY8";   case 0x97: return "NEXT_BUFFER";
  case 0x98: return "READONLY_BUFFER";
  default: return "unknown opcode";
  }
}

/// `torch.<Name>Storage` -> element type; Undefined when not a known storage class.
inline c10::ScalarType torch_storage_dtype(std::string_view global) {
  static const std::pair<std::string_view, c10::ScalarType> table[] = {
      {"torch.DoubleStorage", c10::ScalarType::Double},
      {"torch.FloatStorage", c10::ScalarType::Float},
      {"torch.HalfStorage", c10::ScalarType::Half},
      {"torch.BFloat16Storage", c10::ScalarType::BFloat16},
      {"torch.LongStorage", c10::ScalarType::Long},
      {"torch.IntStorage", c10::ScalarType::Int},
      {"torch.ShortStorage", c10::ScalarType::Short},
      {"torch.CharStorage", c10::ScalarType::Char},
      {"torch.ByteStorage", c10::ScalarType::Byte},
      {"torch.BoolStorage", c10::ScalarType::Bool},
      {"torch.ComplexFloatStorage", c10::ScalarType::ComplexFloat},
      {"torch.ComplexDoubleStorage", c10::ScalarType::ComplexDouble},
  };
  for (const auto& [name, t] : table)
    if (name == global) return t;
  return c10::ScalarType::Undefined;
}

/// Loads the storage record `key` holding `numel` elements of `dtype` (bytes checked by the
/// callee). Used for BINPERSID.
using pickle_storage_loader =
    std::function<at::Storage(const std::string& key, c10::ScalarType dtype, std::int64_t numel)>;

/// The objects run() returns live as long as the unpickler: its destructor empties every container
/// it built. That frees the reference cycles a hostile pickle can build through the memo (a list
/// appended to itself) and keeps destruction flat however deeply the containers nest (a million
/// nested lists would otherwise be freed by a million nested destructor calls).
class torch_unpickler {
public:
  /// `where` prefixes every error message (e.g. "'model.pth': data.pkl").
  torch_unpickler(const unsigned char* data, std::size_t size, std::string where,
                  pickle_storage_loader loader)
      : p_(data), n_(size), where_(std::move(where)), loader_(std::move(loader)) {}
  torch_unpickler(const torch_unpickler&) = delete;
  torch_unpickler& operator=(const torch_unpickler&) = delete;
  ~torch_unpickler() {
    for (const auto& c : containers_) {
      c->items.clear();
      c->entries.clear();
    }
  }

  /// Runs to STOP; returns the unpickled root object (its containers valid while this unpickler lives).
  pickle_ref run() {
    using K = pickle_object::kind;
    while (true) {
      if (pos_ >= n_) fail_at(pos_, "unexpected end of data before STOP (truncated pickle)");
      op_pos_ = pos_;
      const unsigned char op = p_[pos_++];
      switch (op) {
      case 0x80: { // PROTO
        unsigned v = read_u8();
        if (op_pos_ != 0) fail("PROTO must be the first opcode");
        if (v != 2)
          fail(fmt::format("pickle protocol {} is not supported; expected 2 (the torch.save default "
                           "pickle_protocol); re-save with torch.save(sd, f)",
                           v));
        break;
      }
      case '(': marks_.push_back(stack_.size()); break;
      case '}': push(make(K::dict)); break;
      case ']': push(make(K::list)); break;
      case ')': push(make(K::tuple)); break;
      case 'N': push(make(K::none)); break;
      case 0x88: push(make_bool(true)); break;
      case 0x89: push(make_bool(false)); break;
      case 'K': push(make_int(read_u8())); break;
      case 'M': push(make_int(read_u16())); break;
      case 'J': {
        std::uint32_t u = read_u32();
        std::int32_t s;
        std::memcpy(&s, &u, 4);
        push(make_int(s));
        break;
      }
      case 0x8a: { // LONG1
        unsigned len = read_u8();
        if (len > 8) fail(fmt::format("LONG1 of {} bytes does not fit in int64", len));
        need(len);
        std::uint64_t u = 0;
        for (unsigned i = 0; i < len; ++i) u |= std::uint64_t(p_[pos_ + i]) << (8 * i);
        if (len > 0 && len < 8 && (p_[pos_ + len - 1] & 0x80)) u |= ~std::uint64_t(0) << (8 * len);
        pos_ += len;
        std::int64_t s;
        std::memcpy(&s, &u, 8);
        push(make_int(s));
        break;
      }
      case 'G': { // BINFLOAT, big-endian
        need(8);
        std::uint64_t u = 0;
        for (int i = 0; i < 8; ++i) u = (u << 8) | p_[pos_ + std::size_t(i)];
        pos_ += 8;
        auto o = make(K::floating);
        std::memcpy(&o->floating, &u, 8);
        push(std::move(o));
        break;
      }
      case 'X': { // BINUNICODE
        std::uint32_t len = read_u32();
        need(len);
        auto o = make(K::string);
        o->text.assign(reinterpret_cast<const char*>(p_ + pos_), len);
        pos_ += len;
        push(std::move(o));
        break;
      }
      case 'q': memo_put(read_u8()); break;
      case 'r': memo_put(read_u32()); break;
      case 'h': memo_get(read_u8()); break;
      case 'j': memo_get(read_u32()); break;
      case 'c': op_global(); break;
      case 'Q': op_binpersid(); break;
      case 't': {
        auto items = pop_mark();
        auto o = make(K::tuple);
        o->items = std::move(items);
        push(std::move(o));
        break;
      }
      case 0x85: case 0x86: case 0x87: {
        std::size_t k = op - 0x84;
        if (stack_.size() < k + floor()) fail(fmt::format("stack underflow: needs {} items", k));
        auto o = make(K::tuple);
        o->items.assign(stack_.end() - static_cast<long>(k), stack_.end());
        stack_.resize(stack_.size() - k);
        push(std::move(o));
        break;
      }
      case 'R': op_reduce(); break;
      case 's': {
        auto v = pop();
        auto k = pop();
        dict_set(top(), std::move(k), std::move(v));
        break;
      }
      case 'u': {
        auto items = pop_mark();
        if (items.size() % 2 != 0) fail("SETITEMS with an odd number of items");
        auto d = top();
        for (std::size_t i = 0; i < items.size(); i += 2) dict_set(d, items[i], items[i + 1]);
        break;
      }
      case 'a': {
        auto v = pop();
        list_append(top(), std::move(v));
        break;
      }
      case 'e': {
        auto items = pop_mark();
        auto l = top();
        for (auto& v : items) list_append(l, std::move(v));
        break;
      }
      case 'b': op_build(); break;
      case '.': {
        if (!marks_.empty()) fail("STOP with an open MARK");
        if (stack_.size() != 1)
          fail(fmt::format("STOP with {} objects on the stack, expected exactly 1", stack_.size()));
        return stack_.back();
      }
      default:
        fail_at(op_pos_, fmt::format("unsupported pickle opcode 0x{:02x} ({}); only the protocol-2 subset "
                         "written by torch.save(state_dict) is accepted",
                         op, pickle_opcode_name(op)));
      }
    }
  }

private:
  const unsigned char* p_;
  std::size_t n_;
  std::string where_;
  pickle_storage_loader loader_;
  std::size_t pos_ = 0;
  std::size_t op_pos_ = 0;
  std::vector<pickle_ref> stack_;
  std::vector<std::size_t> marks_;
  std::map<std::uint32_t, pickle_ref> memo_;
  std::map<std::string, pickle_ref> storages_;
  std::vector<pickle_ref> containers_; ///< every tuple, list and dict made (emptied on destruction)
  /// Per dict, the position of each string key in its entries (SETITEM in constant time).
  std::map<const pickle_object*, std::map<std::string, std::size_t, std::less<>>> dict_keys_;

  [[noreturn]] void fail_at(std::size_t off, const std::string& msg) const {
    throw checkpoint_error("offload.checkpoint.pickle",
                           fmt::format("{} offset {}: {}", where_, off, msg));
  }
  /// Error at the current opcode; the message names the opcode.
  [[noreturn]] void fail(const std::string& msg) const {
    const char* name = op_pos_ < n_ ? pickle_opcode_name(p_[op_pos_]) : "end of data";
    fail_at(op_pos_, fmt::format("{}: {}", name, msg));
  }

  void need(std::size_t k) const {
    if (k > n_ - pos_)
      fail(fmt::format("needs {} more bytes but only {} remain (truncated pickle)", k, n_ - pos_));
  }
  unsigned read_u8() {
    need(1);
    return p_[pos_++];
  }
  unsigned read_u16() {
    need(2);
    unsigned v = unsigned(p_[pos_]) | (unsigned(p_[pos_ + 1]) << 8);
    pos_ += 2;
    return v;
  }
  std::uint32_t read_u32() {
    need(4);
    std::uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | p_[pos_ + std::size_t(i)];
    pos_ += 4;
    return v;
  }

  pickle_ref make(pickle_object::kind k) {
    auto o = std::make_shared<pickle_object>();
    o->type = k;
    using K = pickle_object::kind;
    if (k == K::tuple || k == K::list || k == K::dict) containers_.push_back(o);
    return o;
  }
  static pickle_ref make_leaf(pickle_object::kind k) {
    auto o = std::make_shared<pickle_object>();
    o->type = k;
    return o;
  }
  static pickle_ref make_bool(bool b) {
    auto o = make_leaf(pickle_object::kind::boolean);
    o->boolean = b;
    return o;
  }
  static pickle_ref make_int(std::int64_t v) {
    auto o = make_leaf(pickle_object::kind::integer);
    o->integer = v;
    return o;
  }

  std::size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(pickle_ref o) { stack_.push_back(std::move(o)); }
  pickle_ref pop() {
    if (stack_.size() <= floor()) fail("stack underflow");
    auto o = std::move(stack_.back());
    stack_.pop_back();
    return o;
  }
  const pickle_ref& top() const {
    if (stack_.size() <= floor()) fail("stack underflow");
    return stack_.back();
  }
  std::vector<pickle_ref> pop_mark() {
    if (marks_.empty()) fail("no MARK on the stack");
    std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<pickle_ref> items(stack_.begin() + static_cast<long>(m), stack_.end());
    stack_.resize(m);
    return items;
  }

  void memo_put(std::uint32_t idx) { memo_[idx] = top(); }
  void memo_get(std::uint32_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) fail(fmt::format("memo index {} was never stored", idx));
    push(it->second);
  }

  void dict_set(const pickle_ref& d, pickle_ref k, pickle_ref v) {
    if (d->type != pickle_object::kind::dict)
      fail(fmt::format("SETITEM(S) target is a {}, expected a dict", pickle_kind_name(d->type)));
    if (k->type == pickle_object::kind::string) {
      auto& keys = dict_keys_[d.get()];
      const auto [it, added] = keys.try_emplace(k->text, d->entries.size());
      if (!added) {
        d->entries[it->second].second = std::move(v); // Python dict semantics: last write wins
        return;
      }
    }
    d->entries.emplace_back(std::move(k), std::move(v));
  }

  void list_append(const pickle_ref& l, pickle_ref v) {
    if (l->type != pickle_object::kind::list)
      fail(fmt::format("APPEND(S) target is a {}, expected a list", pickle_kind_name(l->type)));
    l->items.push_back(std::move(v));
  }

  void op_global() {
    std::string module = read_line();
    std::string name = read_line();
    std::string full = module + "." + name;
    const bool allowed = full == "collections.OrderedDict" ||
                         full == "torch._utils._rebuild_tensor_v2" ||
                         full == "torch._utils._rebuild_parameter" ||
                         torch_storage_dtype(full) != c10::ScalarType::Undefined;
    if (!allowed)
      fail_at(op_pos_,
              fmt::format("GLOBAL '{} {}' is not allowed; a state_dict file may only reference "
                          "collections.OrderedDict, torch._utils._rebuild_tensor_v2, "
                          "torch._utils._rebuild_parameter and torch.<Type>Storage",
                          module, name));
    auto o = make(pickle_object::kind::global);
    o->text = std::move(full);
    push(std::move(o));
  }

  std::string read_line() {
    std::size_t start = pos_;
    while (pos_ < n_ && p_[pos_] != '\n') {
      if (pos_ - start > 256) fail("GLOBAL name longer than 256 bytes");
      ++pos_;
    }
    if (pos_ >= n_) fail("unterminated GLOBAL name (truncated pickle)");
    std::string s(reinterpret_cast<const char*>(p_ + start), pos_ - start);
    ++pos_;
    return s;
  }

  void op_binpersid() {
    using K = pickle_object::kind;
    auto pid = pop();
    if (pid->type != K::tuple || pid->items.size() != 5 || pid->items[0]->type != K::string ||
        pid->items[0]->text != "storage" || pid->items[1]->type != K::global ||
        pid->items[2]->type != K::string || pid->items[3]->type != K::string ||
        pid->items[4]->type != K::integer)
      fail("persistent id must be ('storage', torch.<Type>Storage, key: str, location: str, "
           "numel: int)");
    const std::string& type_name = pid->items[1]->text;
    c10::ScalarType dtype = torch_storage_dtype(type_name);
    if (dtype == c10::ScalarType::Undefined)
      fail(fmt::format("persistent id storage type '{}' is not a torch.<Type>Storage", type_name));
    const std::string& key = pid->items[2]->text;
    const std::int64_t numel = pid->items[4]->integer;
    if (numel < 0) fail(fmt::format("storage '{}' has negative numel {}", key, numel));
    auto it = storages_.find(key);
    if (it != storages_.end()) {
      if (it->second->dtype != dtype || it->second->numel != numel)
        fail(fmt::format("storage '{}' is referenced as {} x {} and as {} x {}", key,
                         c10::toString(it->second->dtype), it->second->numel,
                         c10::toString(dtype), numel));
      push(it->second);
      return;
    }
    auto o = make(K::storage);
    o->dtype = dtype;
    o->numel = numel;
    o->storage = loader_(key, dtype, numel);
    // The loader checks the record's size; this keeps tensor views inside the storage whatever
    // the loader does (numel * element size computed without overflow).
    const auto nbytes = static_cast<unsigned __int128>(o->storage.nbytes());
    if (nbytes != static_cast<unsigned __int128>(numel) * c10::elementSize(dtype))
      fail(fmt::format("storage '{}' holds {} bytes, expected {} x {} ({} bytes each); the file is corrupt", key,
                       o->storage.nbytes(), numel, c10::toString(dtype), c10::elementSize(dtype)));
    storages_.emplace(key, o);
    push(std::move(o));
  }

  static bool is_int_tuple(const pickle_ref& o) {
    if (o->type != pickle_object::kind::tuple) return false;
    for (const auto& i : o->items)
      if (i->type != pickle_object::kind::integer) return false;
    return true;
  }

  at::Tensor rebuild_tensor(const std::vector<pickle_ref>& a) {
    using K = pickle_object::kind;
    if ((a.size() != 6 && a.size() != 7) || a[0]->type != K::storage || a[1]->type != K::integer ||
        !is_int_tuple(a[2]) || !is_int_tuple(a[3]) || a[4]->type != K::boolean ||
        a[5]->type != K::dict)
      fail("_rebuild_tensor_v2 expects (storage, storage_offset: int, size: tuple[int], "
           "stride: tuple[int], requires_grad: bool, backward_hooks: OrderedDict[, metadata])");
    if (a.size() == 7 && a[6]->type != K::none && !(a[6]->type == K::dict && a[6]->entries.empty()))
      fail("_rebuild_tensor_v2 metadata argument is not supported (expected None or {})");
    if (!a[5]->entries.empty()) fail("_rebuild_tensor_v2 with backward hooks is not supported");
    const auto& st = *a[0];
    const std::int64_t offset = a[1]->integer;
    std::vector<std::int64_t> size, stride;
    for (const auto& i : a[2]->items) size.push_back(i->integer);
    for (const auto& i : a[3]->items) stride.push_back(i->integer);
    if (size.size() != stride.size())
      fail(fmt::format("tensor has {} sizes but {} strides", size.size(), stride.size()));
    if (offset < 0) fail(fmt::format("negative storage offset {}", offset));
    bool empty = false;
    for (std::size_t d = 0; d < size.size(); ++d) {
      if (size[d] < 0) fail(fmt::format("negative size {} in dimension {}", size[d], d));
      if (stride[d] < 0) fail(fmt::format("negative stride {} in dimension {}", stride[d], d));
      if (size[d] == 0) empty = true;
    }
    if (!empty) {
      // Largest element index touched, in 128 bits: each term is below 2^126, and the sum stops
      // growing once it passes int64 (so it never overflows, whatever the number of dimensions).
      constexpr __int128 beyond = __int128(std::numeric_limits<std::int64_t>::max()) + 1;
      __int128 last = offset;
      for (std::size_t d = 0; d < size.size() && last < beyond; ++d) last += __int128(size[d] - 1) * stride[d];
      if (last >= st.numel)
        fail(fmt::format("tensor view (offset {}, size [{}], stride [{}]) reaches element {} of a "
                         "storage of {} elements",
                         offset, fmt::join(size, ", "), fmt::join(stride, ", "),
                         last < beyond ? fmt::to_string(static_cast<std::int64_t>(last)) : "2^63 or beyond",
                         st.numel));
    } else if (offset > st.numel) {
      fail(fmt::format("storage offset {} beyond a storage of {} elements", offset, st.numel));
    }
    at::Tensor t = at::empty({0}, at::TensorOptions().dtype(st.dtype).device(c10::kCPU));
    t.set_(st.storage, offset, size, stride);
    return t;
  }

  void op_reduce() {
    using K = pickle_object::kind;
    auto args = pop();
    auto callable = pop();
    if (callable->type != K::global)
      fail(fmt::format("REDUCE callable is a {}, expected a global", pickle_kind_name(callable->type)));
    if (args->type != K::tuple)
      fail(fmt::format("REDUCE arguments are a {}, expected a tuple", pickle_kind_name(args->type)));
    const std::string& f = callable->text;
    if (f == "collections.OrderedDict") {
      if (!args->items.empty()) fail("collections.OrderedDict called with arguments");
      auto d = make(K::dict);
      d->ordered = true;
      push(std::move(d));
    } else if (f == "torch._utils._rebuild_tensor_v2") {
      auto o = make(K::tensor);
      o->tensor = rebuild_tensor(args->items);
      push(std::move(o));
    } else if (f == "torch._utils._rebuild_parameter") {
      const auto& a = args->items;
      if (a.size() != 3 || a[0]->type != K::tensor || a[1]->type != K::boolean || a[2]->type != K::dict)
        fail("_rebuild_parameter expects (tensor, requires_grad: bool, backward_hooks: OrderedDict)");
      auto o = make(K::tensor);
      o->tensor = a[0]->tensor;
      push(std::move(o));
    } else {
      fail(fmt::format("REDUCE of '{}' is not supported", f));
    }
  }

  void op_build() {
    using K = pickle_object::kind;
    auto state = pop();
    const auto& obj = top();
    if (obj->type != K::dict || !obj->ordered)
      fail(fmt::format("BUILD target is a {}, expected an OrderedDict", pickle_kind_name(obj->type)));
    if (state->type == K::none) return;
    if (state->type != K::dict)
      fail(fmt::format("BUILD state is a {}, expected a dict of attributes",
                       pickle_kind_name(state->type)));
    for (const auto& [k, v] : state->entries)
      if (k->type != K::string || k->text != "_metadata")
        fail("BUILD state of an OrderedDict may only set '_metadata'");
    // `_metadata` (per-module version numbers) carries no tensor data; it is accepted and dropped.
  }
};

} // namespace offload::detail
