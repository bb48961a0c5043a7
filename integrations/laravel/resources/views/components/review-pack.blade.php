<div {{ $attributes->merge(['class' => 'runwire-review-pack']) }} data-runwire-review-pack="{{ $tenantId }}" data-pack-id="{{ $packId }}" data-status="{{ $status }}" data-terminal="{{ $terminal ? 'true' : 'false' }}" data-none-text="{{ $none }}">
    <span class="runwire-status" data-runwire-field="status">{{ $packId ? $status : $none }}</span>
    {{ $slot }}
</div>
