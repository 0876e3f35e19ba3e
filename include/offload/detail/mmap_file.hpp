#pragma once
/// \file
/// RAII memory mapping of a whole file (POSIX).
///
/// The mapping is `MAP_PRIVATE` with `PROT_READ | PROT_WRITE`: pages are shared with the page
/// cache until written, and a write (e.g. an in-place op on a tensor that views the mapping)
/// only touches a private copy-on-write page, never the file.

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <offload/errors.hpp>

namespace offload::detail {

class mapped_file {
public:
  /// Maps `path`; throws checkpoint_error (`offload.checkpoint.io`) on failure.
  explicit mapped_file(const std::filesystem::path& path) : path_(path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      throw checkpoint_error("offload.checkpoint.io",
                             fmt::format("cannot open '{}': {}; check the path and permissions",
                                         path.string(), std::strerror(err)));
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      int err = errno;
      ::close(fd);
      throw checkpoint_error("offload.checkpoint.io",
                             fmt::format("cannot stat '{}': {}", path.string(), std::strerror(err)));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      throw checkpoint_error("offload.checkpoint.io",
                             fmt::format("'{}' is not a regular file", path.string()));
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        int err = errno;
        ::close(fd);
        throw checkpoint_error("offload.checkpoint.io",
                               fmt::format("cannot mmap '{}' ({} bytes): {}", path.string(),
                                           size_, std::strerror(err)));
      }
      data_ = static_cast<unsigned char*>(p);
    }
    ::close(fd); // the mapping stays valid after close
  }

  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;

  ~mapped_file() {
    if (data_ != nullptr) ::munmap(data_, size_);
  }

  [[nodiscard]] unsigned char* data() const noexcept { return data_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

private:
  std::filesystem::path path_;
  unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
};

} // namespace offload::detail
