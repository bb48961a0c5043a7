<!doctype html>
<html lang="en">
<head>
    <meta charset="utf-8">
    <link rel="icon" href="data:,">
    <title>@yield('title') · Operations</title>
    <style>
        body { font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 40rem; }
        .runwire-status { font-weight: 600; }
        #runwire-error { color: #b00020; }
    </style>
    {{-- runwire's client, configured for the signed-in user; <x-runwire::…> elements go live. --}}
    @runwireScripts
</head>
<body>
@yield('content')
<p id="runwire-error" hidden></p>
<script>
// The page's runwire client gave up (runwire kept refusing its tokens): say so.
window.addEventListener('runwire:error', (e) => {
    const box = document.getElementById('runwire-error');
    box.hidden = false;
    box.dataset.status = e.detail.status;
    box.textContent = 'Live updates stopped: ' + e.detail.message + '. Reload the page.';
});
</script>
@stack('scripts')
</body>
</html>
