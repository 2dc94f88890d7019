"""The agent reads its own process memory from /proc/self/status."""

from edge_agent.process import process_memory, rss_bytes

STATUS = """Name:\tpython
VmPeak:\t  500000 kB
VmHWM:\t   61234 kB
VmRSS:\t   60000 kB
RssAnon:\t   21000 kB
RssFile:\t   39000 kB
"""


def test_peak_is_vmhwm_and_anonymous_is_rssanon_in_bytes(tmp_path):
    status = tmp_path / "status"
    status.write_text(STATUS)
    process = process_memory(status)
    assert (process.rss_peak_bytes, process.rss_anon_bytes) == (61234 * 1024, 21000 * 1024)
    assert rss_bytes(status) == 60000 * 1024


def test_this_process_holds_less_anonymous_memory_than_its_peak():
    process = process_memory()
    assert 0 < process.rss_anon_bytes < process.rss_peak_bytes
