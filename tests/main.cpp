// The single Boost.Test main shared by every test executable.
#define BOOST_TEST_MODULE offload
#include <boost/test/unit_test.hpp>
