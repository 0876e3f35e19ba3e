#include <offload/units.hpp>

#include <boost/test/unit_test.hpp>

using namespace offload::literals;

BOOST_AUTO_TEST_SUITE(units)

BOOST_AUTO_TEST_CASE(parses_binary_and_decimal_units) {
  BOOST_TEST(offload::parse_bytes("11.49GiB") == 11.49_GiB);
  BOOST_TEST(offload::parse_bytes("8 GiB") == 8_GiB);
  BOOST_TEST(offload::parse_bytes("512MiB") == 512_MiB);
  BOOST_TEST(offload::parse_bytes("2GB") == 2000000000);
  BOOST_TEST(offload::parse_bytes("1024") == 1024);
  BOOST_TEST(offload::parse_bytes("3G") == 3_GiB);
}

BOOST_AUTO_TEST_CASE(rejects_bad_text_with_position) {
  try {
    (void)offload::parse_bytes("11.49GiX");
    BOOST_FAIL("expected config_error");
  } catch (const offload::config_error& e) {
    BOOST_TEST(e.id() == "offload.config.bytes_unit");
    BOOST_TEST(std::string(e.what()).find("'GiX' at position 5") != std::string::npos);
  }
  BOOST_CHECK_THROW((void)offload::parse_bytes("GiB"), offload::config_error);
  BOOST_CHECK_THROW((void)offload::parse_bytes(""), offload::config_error);
}

// Found by the fuzzer (tests/fuzz, target cli): a number beyond the double range escaped as
// std::out_of_range (std::stod), and one beyond int64 came back as an unspecified llround value.
BOOST_AUTO_TEST_CASE(rejects_sizes_out_of_range_as_config_error) {
  const std::string digits400(400, '9');
  // Built by append: g++ 12 misreads `std::string("1") + std::string(400, '0')` as a buffer
  // overflow (-Wstringop-overflow, a known false positive of its inlined operator+).
  const std::string fraction = std::string("1").append(400, '0').append(".5");
  for (const std::string& text : {digits400, digits400 + "GiB", std::string("9999999999999TiB"),
                                  std::string("9223372036854775808"), fraction}) {
    try {
      (void)offload::parse_bytes(text);
      BOOST_FAIL("expected config_error for " << text.substr(0, 20));
    } catch (const offload::config_error& e) {
      BOOST_TEST(e.id() == "offload.config.bytes_range");
    }
  }
  BOOST_TEST(offload::parse_bytes("8388607TiB") == 8388607LL * 1099511627776LL); // just below 2^63
  BOOST_TEST(offload::parse_bytes("0.5") == 1); // llround, as before
  BOOST_TEST(offload::parse_bytes("5.") == 5);
  BOOST_TEST(offload::parse_bytes(".5KiB") == 512);
}

BOOST_AUTO_TEST_CASE(formats_in_largest_unit) {
  BOOST_TEST(offload::format_bytes(11.49_GiB) == "11.49 GiB");
  BOOST_TEST(offload::format_bytes(1536) == "1.50 KiB");
  BOOST_TEST(offload::format_bytes(12) == "12 B");
}

BOOST_AUTO_TEST_SUITE_END()
