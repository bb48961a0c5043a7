{{-- One runwire client per page, created here once and shared by every component on it. --}}
<script src="{{ config('services.runwire.url') }}/runwire.js"></script>
<script>
window.runwire = new Runwire({
    baseUrl: @json(config('services.runwire.url')),
    token: @json(\App\Support\Runwire::token(auth()->user())),
    // Called on a 401 or an expired token. After 3 refreshes in a row that do not give a
    // working token, runwire.js stops and calls onError instead of retrying.
    refreshToken: () => fetch(@json(route('runwire.token', [], false)), {
        method: 'POST',
        headers: {'X-CSRF-TOKEN': @json(csrf_token()), 'Accept': 'application/json'},
    }).then((r) => {
        if (!r.ok) throw new Error('token route answered ' + r.status);
        return r.json();
    }).then((body) => body.token),
    onError: (e) => {
        const box = document.getElementById('runwire-error');
        box.hidden = false;
        box.dataset.status = e.status;
        box.textContent = 'Live updates stopped: ' + (e.cause || e.status) + '. Reload the page.';
    },
});
</script>
